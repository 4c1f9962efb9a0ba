//! Distances on the map: the straight line (haversine) times a road factor, rounded to whole
//! metres, and the time to drive them at an average speed.

use crate::Options;

const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Whether a point is a real place: finite, latitude within ±90°, longitude within ±180°.
pub fn on_map(lat: f64, lng: f64) -> bool {
    lat.is_finite() && lng.is_finite() && lat.abs() <= 90.0 && lng.abs() <= 180.0
}

/// Great-circle metres between two points (degrees).
pub fn straight_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
    let dlat = lat2 - lat1;
    let dlng = (b.1 - a.1).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Road distances and driving times between points.
#[derive(Clone, Copy, Debug)]
pub struct Roads {
    factor: f64,
    metres_per_sec: f64,
}

impl Roads {
    pub fn new(options: &Options) -> Roads {
        Roads {
            factor: options.road_factor,
            metres_per_sec: options.speed_kmh / 3.6,
        }
    }

    /// Road metres from `a` to `b`, whole.
    pub fn metres(&self, a: (f64, f64), b: (f64, f64)) -> f64 {
        (straight_m(a, b) * self.factor).round()
    }

    /// Seconds to drive `metres`.
    pub fn secs(&self, metres: f64) -> f64 {
        metres / self.metres_per_sec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_degree_of_latitude_is_about_111_km() {
        let d = straight_m((40.0, -74.0), (41.0, -74.0));
        assert!((d - 111_195.0).abs() < 50.0, "{d}");
        assert_eq!(straight_m((1.0, 2.0), (1.0, 2.0)), 0.0);
        assert!(!on_map(91.0, 0.0));
        assert!(!on_map(f64::NAN, 0.0));
    }
}
