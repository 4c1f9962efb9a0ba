//! A local search over the solver's routes: moves that shorten the total distance while every
//! route keeps within its stops and its shift, applied until none is left (or a time limit).
//!
//! vrp-core's evolutionary search finds the assignment; this polish tries, exhaustively, the
//! classic neighbourhoods around it: reversing a stretch of a route (2-opt), moving one stop to
//! any place in any route of the region (relocate), moving a stretch of two or three (or-opt),
//! exchanging two routes' tails (2-opt*), and exchanging two stops of two routes (swap). Each move's gain is computed from the endpoints alone; only an improving one is
//! checked for the shift (distance and service time over the crew's available seconds).

use std::time::Instant;

use crate::geo::Roads;
use crate::{Depot, Options, Shift, Stop};

/// Road metres and driving seconds between a region's points (the depot is point 0, stop `i`
/// point `i + 1`), and each point's service seconds: the numbers the solver and the polish work
/// on (and the routing bench gives OR-Tools).
pub struct Matrix {
    pub n: usize,
    /// Row-major, `n × n`.
    pub metres: Vec<f64>,
    pub secs: Vec<f64>,
    pub service: Vec<f64>,
}

impl Matrix {
    /// The matrix of `depot` and `stops` for `shift`.
    pub fn of(depot: &Depot, stops: &[&Stop], shift: &Shift, options: &Options) -> Matrix {
        let roads = Roads::new(options);
        let points: Vec<(f64, f64)> = std::iter::once((depot.lat, depot.lng))
            .chain(stops.iter().map(|s| (s.lat, s.lng)))
            .collect();
        let n = points.len();
        let mut metres = Vec::with_capacity(n * n);
        for &a in &points {
            for &b in &points {
                metres.push(roads.metres(a, b));
            }
        }
        Matrix {
            n,
            secs: metres.iter().map(|&m| roads.secs(m)).collect(),
            metres,
            service: std::iter::once(0.0)
                .chain(stops.iter().map(|s| s.service_secs(shift, options)))
                .collect(),
        }
    }

    fn d(&self, a: usize, b: usize) -> f64 {
        self.metres[a * self.n + b]
    }

    fn t(&self, a: usize, b: usize) -> f64 {
        self.secs[a * self.n + b]
    }

    /// A route's metres (points, depot at both ends implied).
    pub fn length(&self, route: &[usize]) -> f64 {
        let mut at = 0;
        let mut metres = 0.0;
        for &p in route {
            metres += self.d(at, p);
            at = p;
        }
        metres + self.d(at, 0)
    }

    /// A route's seconds from leaving the depot to being back.
    pub fn duration(&self, route: &[usize]) -> f64 {
        let mut at = 0;
        let mut secs = 0.0;
        for &p in route {
            secs += self.t(at, p) + self.service[p];
            at = p;
        }
        secs + self.t(at, 0)
    }
}

/// What a route may hold.
pub(crate) struct Limits {
    pub stops: usize,
    pub secs: f64,
}

/// The point before position `i` of `route` (the depot before the first).
fn before(route: &[usize], i: usize) -> usize {
    if i == 0 { 0 } else { route[i - 1] }
}

/// The point after position `i` of `route` (the depot after the last).
fn after(route: &[usize], i: usize) -> usize {
    route.get(i + 1).copied().unwrap_or(0)
}

/// Shortens `routes` (points of `m`) in place; returns the metres saved.
pub(crate) fn improve(
    routes: &mut [Vec<usize>],
    m: &Matrix,
    limits: &Limits,
    until: Instant,
) -> f64 {
    const EPS: f64 = 1e-6;
    let start: f64 = routes.iter().map(|r| m.length(r)).sum();
    let mut improved = true;
    while improved && Instant::now() < until {
        improved = false;
        // 2-opt within each route: shorter distance, so a shorter shift too.
        for route in routes.iter_mut() {
            let n = route.len();
            for i in 0..n {
                for j in i + 1..n {
                    let (a, b) = (before(route, i), after(route, j));
                    let gain =
                        m.d(a, route[i]) + m.d(route[j], b) - m.d(a, route[j]) - m.d(route[i], b);
                    if gain > EPS {
                        route[i..=j].reverse();
                        improved = true;
                    }
                }
            }
        }
        // Relocate one stop anywhere (its own route or another with room).
        for r in 0..routes.len() {
            let mut i = 0;
            while i < routes[r].len() {
                let p = routes[r][i];
                let (a, b) = (before(&routes[r], i), after(&routes[r], i));
                let removed = m.d(a, p) + m.d(p, b) - m.d(a, b);
                let mut best: Option<(f64, usize, usize)> = None;
                for (q, route) in routes.iter().enumerate() {
                    if q != r && route.len() >= limits.stops {
                        continue;
                    }
                    for k in 0..=route.len() {
                        if q == r && (k == i || k == i + 1) {
                            continue;
                        }
                        let (x, y) = (before(route, k), route.get(k).copied().unwrap_or(0));
                        let added = m.d(x, p) + m.d(p, y) - m.d(x, y);
                        let gain = removed - added;
                        if gain > EPS && best.is_none_or(|(g, _, _)| gain > g) {
                            best = Some((gain, q, k));
                        }
                    }
                }
                let mut moved = false;
                if let Some((_, q, k)) = best {
                    let mut target = routes[q].clone();
                    if q == r {
                        let at = if k > i { k - 1 } else { k };
                        target.remove(i);
                        target.insert(at, p);
                        routes[r] = target;
                        moved = true;
                    } else {
                        target.insert(k, p);
                        if m.duration(&target) <= limits.secs {
                            routes[q] = target;
                            routes[r].remove(i);
                            moved = true;
                        }
                    }
                }
                if moved {
                    improved = true;
                } else {
                    i += 1;
                }
            }
        }
        // Relocate a stretch of 2 or 3 stops (as it is, or reversed) anywhere else.
        for len in [2usize, 3] {
            for r in 0..routes.len() {
                let mut i = 0;
                while i + len <= routes[r].len() {
                    if relocate_segment(routes, m, limits, r, i, len) {
                        improved = true;
                    } else {
                        i += 1;
                    }
                }
            }
        }
        // 2-opt*: two routes exchange their tails.
        for r in 0..routes.len() {
            for q in r + 1..routes.len() {
                let mut found = true;
                while found {
                    found = false;
                    'cuts: for i in 0..=routes[r].len() {
                        for k in 0..=routes[q].len() {
                            // Keep r[..i] and q[..k]; swap what follows.
                            let (a, b) = (
                                before(&routes[r], i),
                                routes[r].get(i).copied().unwrap_or(0),
                            );
                            let (x, y) = (
                                before(&routes[q], k),
                                routes[q].get(k).copied().unwrap_or(0),
                            );
                            let gain = m.d(a, b) + m.d(x, y) - m.d(a, y) - m.d(x, b);
                            if gain <= EPS {
                                continue;
                            }
                            let new_r: Vec<usize> = routes[r][..i]
                                .iter()
                                .chain(&routes[q][k..])
                                .copied()
                                .collect();
                            let new_q: Vec<usize> = routes[q][..k]
                                .iter()
                                .chain(&routes[r][i..])
                                .copied()
                                .collect();
                            if new_r.len() <= limits.stops
                                && new_q.len() <= limits.stops
                                && m.duration(&new_r) <= limits.secs
                                && m.duration(&new_q) <= limits.secs
                            {
                                routes[r] = new_r;
                                routes[q] = new_q;
                                improved = true;
                                found = true;
                                break 'cuts;
                            }
                        }
                    }
                }
            }
        }
        // Swap two stops of two routes.
        for r in 0..routes.len() {
            for q in r + 1..routes.len() {
                for i in 0..routes[r].len() {
                    for k in 0..routes[q].len() {
                        let (p, s) = (routes[r][i], routes[q][k]);
                        let (a, b) = (before(&routes[r], i), after(&routes[r], i));
                        let (x, y) = (before(&routes[q], k), after(&routes[q], k));
                        let gain = m.d(a, p) + m.d(p, b) + m.d(x, s) + m.d(s, y)
                            - m.d(a, s)
                            - m.d(s, b)
                            - m.d(x, p)
                            - m.d(p, y);
                        if gain <= EPS {
                            continue;
                        }
                        routes[r][i] = s;
                        routes[q][k] = p;
                        if m.duration(&routes[r]) <= limits.secs
                            && m.duration(&routes[q]) <= limits.secs
                        {
                            improved = true;
                        } else {
                            routes[r][i] = p;
                            routes[q][k] = s;
                        }
                    }
                }
            }
        }
    }
    start - routes.iter().map(|r| m.length(r)).sum::<f64>()
}

/// Moves `len` stops of route `r` from position `i` to where they save the most (reversed if
/// that is shorter), within the limits; true if moved.
fn relocate_segment(
    routes: &mut [Vec<usize>],
    m: &Matrix,
    limits: &Limits,
    r: usize,
    i: usize,
    len: usize,
) -> bool {
    const EPS: f64 = 1e-6;
    let segment: Vec<usize> = routes[r][i..i + len].to_vec();
    let (first, last) = (segment[0], segment[len - 1]);
    let (a, b) = (before(&routes[r], i), after(&routes[r], i + len - 1));
    let removed = m.d(a, first) + m.d(last, b) - m.d(a, b);
    // (gain, route, position in the route without the segment, reversed)
    let mut best: Option<(f64, usize, usize, bool)> = None;
    for (q, route) in routes.iter().enumerate() {
        if q != r && route.len() + len > limits.stops {
            continue;
        }
        let rest: Vec<usize> = if q == r {
            route[..i]
                .iter()
                .chain(&route[i + len..])
                .copied()
                .collect()
        } else {
            route.clone()
        };
        for k in 0..=rest.len() {
            if q == r && k == i {
                continue;
            }
            let (x, y) = (before(&rest, k), rest.get(k).copied().unwrap_or(0));
            for reversed in [false, true] {
                let (head, tail) = if reversed {
                    (last, first)
                } else {
                    (first, last)
                };
                let gain = removed - (m.d(x, head) + m.d(tail, y) - m.d(x, y));
                if gain > EPS && best.is_none_or(|(g, ..)| gain > g) {
                    best = Some((gain, q, k, reversed));
                }
            }
        }
    }
    let Some((_, q, k, reversed)) = best else {
        return false;
    };
    let mut moved = segment;
    if reversed {
        moved.reverse();
    }
    if q == r {
        let mut rest: Vec<usize> = routes[r][..i]
            .iter()
            .chain(&routes[r][i + len..])
            .copied()
            .collect();
        rest.splice(k..k, moved);
        routes[r] = rest;
        return true;
    }
    let mut target = routes[q].clone();
    target.splice(k..k, moved);
    if m.duration(&target) > limits.secs {
        return false;
    }
    routes[q] = target;
    routes[r].drain(i..i + len);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(points: &[(f64, f64)], service: f64) -> Matrix {
        let n = points.len();
        let mut metres = Vec::with_capacity(n * n);
        for a in points {
            for b in points {
                metres.push(((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt());
            }
        }
        let secs = metres.clone();
        Matrix {
            n,
            metres,
            secs,
            service: std::iter::once(0.0)
                .chain(std::iter::repeat_n(service, n - 1))
                .collect(),
        }
    }

    #[test]
    fn moves_shorten_the_routes_and_keep_their_limits() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            let points: Vec<(f64, f64)> = std::iter::once((50.0, 50.0))
                .chain(
                    (0..40).map(|_| (rng.random_range(0.0..100.0), rng.random_range(0.0..100.0))),
                )
                .collect();
            let m = matrix(&points, 5.0);
            // A poor start: stops dealt round-robin to 4 routes.
            let mut routes: Vec<Vec<usize>> = (0..4)
                .map(|r| (1..=40).filter(|p| p % 4 == r).collect())
                .collect();
            let limits = Limits {
                stops: 12,
                secs: 1_000.0,
            };
            let before: f64 = routes.iter().map(|r| m.length(r)).sum();
            let saved = improve(
                &mut routes,
                &m,
                &limits,
                Instant::now() + std::time::Duration::from_secs(5),
            );
            let after: f64 = routes.iter().map(|r| m.length(r)).sum();
            assert!((before - after - saved).abs() < 1e-6);
            assert!(after < before * 0.8, "{before} → {after}");
            let mut all: Vec<usize> = routes.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (1..=40).collect::<Vec<_>>(), "every stop once");
            for r in &routes {
                assert!(r.len() <= limits.stops, "{r:?}");
                assert!(m.duration(r) <= limits.secs, "{r:?}");
            }
        }
    }
}
