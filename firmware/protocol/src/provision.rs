//! A machine's provisioning bundle: what a new controller needs to start publishing, made by
//! `vendflow device provision` when the machine is registered.
//!
//! As a file (JSON, kept private: it holds the machine's secret):
//! ```json
//! {"version":1,"machineId":"mach_00042","secret":"…","mqtt":"mqtt.example:8883",
//!  "http":"https://api.example/api/telemetry","planogram":[{"slotNumber":1,"productId":"cola","priceCents":250,"capacity":12}]}
//! ```
//! and as a QR-code payload for the installer's phone or the machine's camera: `VFP1:`
//! followed by the same bundle in a compact JSON form (short keys, each slot an array
//! `[slot, product, priceCents, capacity]`) in unpadded URL-safe base64, so that a 30-slot
//! planogram fits a QR code (about 1 KB; the long form would not).

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::units::MachineId;

/// The bundle format this build writes and reads.
pub const BUNDLE_VERSION: u32 = 1;

/// What starts a QR payload.
pub const QR_PREFIX: &str = "VFP1:";

/// Slots a bundle's planogram may have at most.
const MAX_SLOTS: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bundle {
    pub version: u32,
    pub machine_id: String,
    /// The machine's secret: its signing key is derived from it.
    pub secret: String,
    /// The MQTT broker, `HOST:PORT`.
    pub mqtt: String,
    /// Telemetry over HTTP (`POST …/api/telemetry`), for machines without MQTT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    pub planogram: Vec<BundleSlot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleSlot {
    pub slot_number: u32,
    pub product_id: String,
    pub price_cents: i64,
    pub capacity: u32,
}

/// Why a bundle cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not a provisioning bundle: {0}")]
    Malformed(String),
    #[error(
        "the bundle is version {0}; this controller reads version {BUNDLE_VERSION} (provision the machine again)"
    )]
    Version(u32),
    #[error("the bundle's {0}")]
    Invalid(String),
}

impl Bundle {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads and checks a bundle: its version, the machine id, the secret, the broker's
    /// address and the planogram (unique slots, prices above zero).
    pub fn from_json(bytes: &[u8]) -> Result<Bundle, BundleError> {
        let bundle: Bundle =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed(e.to_string()))?;
        bundle.check()
    }

    fn check(self) -> Result<Bundle, BundleError> {
        let bundle = self;
        if bundle.version != BUNDLE_VERSION {
            return Err(BundleError::Version(bundle.version));
        }
        MachineId::parse(&bundle.machine_id)
            .map_err(|e| BundleError::Invalid(format!("machine id: {e}")))?;
        if bundle.secret.len() < 16 {
            return Err(BundleError::Invalid("secret is too short".into()));
        }
        let port = bundle.mqtt.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(BundleError::Invalid(format!(
                "mqtt {:?} is not HOST:PORT",
                bundle.mqtt
            )));
        }
        if bundle.planogram.len() > MAX_SLOTS {
            return Err(BundleError::Invalid(format!(
                "planogram has more than {MAX_SLOTS} slots"
            )));
        }
        for (i, s) in bundle.planogram.iter().enumerate() {
            if s.price_cents <= 0 || s.product_id.is_empty() {
                return Err(BundleError::Invalid(format!(
                    "slot {} has no product or no price",
                    s.slot_number
                )));
            }
            if bundle.planogram[..i]
                .iter()
                .any(|o| o.slot_number == s.slot_number)
            {
                return Err(BundleError::Invalid(format!(
                    "slot {} appears twice",
                    s.slot_number
                )));
            }
        }
        Ok(bundle)
    }

    /// The QR-code payload: [`QR_PREFIX`] and the compact form in unpadded URL-safe base64.
    pub fn qr_payload(&self) -> String {
        let compact = Compact {
            v: self.version,
            m: self.machine_id.clone(),
            s: self.secret.clone(),
            q: self.mqtt.clone(),
            h: self.http.clone(),
            p: self
                .planogram
                .iter()
                .map(|s| {
                    (
                        s.slot_number,
                        s.product_id.clone(),
                        s.price_cents,
                        s.capacity,
                    )
                })
                .collect(),
        };
        let json = serde_json::to_string(&compact).unwrap_or_default();
        format!(
            "{QR_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn from_qr_payload(text: &str) -> Result<Bundle, BundleError> {
        let encoded = text.trim().strip_prefix(QR_PREFIX).ok_or_else(|| {
            BundleError::Malformed(format!("a QR payload starts with {QR_PREFIX}"))
        })?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|e| BundleError::Malformed(e.to_string()))?;
        let c: Compact =
            serde_json::from_slice(&json).map_err(|e| BundleError::Malformed(e.to_string()))?;
        Bundle {
            version: c.v,
            machine_id: c.m,
            secret: c.s,
            mqtt: c.q,
            http: c.h,
            planogram: c
                .p
                .into_iter()
                .map(
                    |(slot_number, product_id, price_cents, capacity)| BundleSlot {
                        slot_number,
                        product_id,
                        price_cents,
                        capacity,
                    },
                )
                .collect(),
        }
        .check()
    }
}

/// The bundle as a QR code carries it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Compact {
    v: u32,
    m: String,
    s: String,
    q: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    h: Option<String>,
    p: Vec<(u32, String, i64, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Bundle {
        Bundle {
            version: BUNDLE_VERSION,
            machine_id: "mach_00042".into(),
            secret: "0123456789abcdef0123456789abcdef".into(),
            mqtt: "mqtt.example:8883".into(),
            http: None,
            planogram: vec![
                BundleSlot {
                    slot_number: 1,
                    product_id: "cola".into(),
                    price_cents: 250,
                    capacity: 12,
                },
                BundleSlot {
                    slot_number: 148,
                    product_id: "chips".into(),
                    price_cents: 175,
                    capacity: 10,
                },
            ],
        }
    }

    #[test]
    fn a_bundle_survives_its_file_and_its_qr_code_and_a_bad_one_says_why() {
        let b = bundle();
        assert_eq!(Bundle::from_json(b.to_json().as_bytes()), Ok(b.clone()));
        let qr = b.qr_payload();
        assert!(qr.starts_with(QR_PREFIX) && qr.is_ascii());
        assert_eq!(Bundle::from_qr_payload(&qr), Ok(b.clone()));
        let mut newer = b.clone();
        newer.version = 2;
        assert_eq!(
            Bundle::from_json(newer.to_json().as_bytes()),
            Err(BundleError::Version(2))
        );
        let mut twice = b.clone();
        twice.planogram[1].slot_number = 1;
        assert!(matches!(
            Bundle::from_json(twice.to_json().as_bytes()),
            Err(BundleError::Invalid(_))
        ));
        let mut no_port = b;
        no_port.mqtt = "mqtt.example".into();
        assert!(Bundle::from_json(no_port.to_json().as_bytes()).is_err());
        assert!(Bundle::from_qr_payload("hello").is_err());
        assert!(Bundle::from_qr_payload("VFP1:!!!").is_err());
        // A 30-slot planogram fits a QR code's 2,953 bytes with room to spare.
        let mut full = bundle();
        full.planogram = (1..=30)
            .map(|n| BundleSlot {
                slot_number: 100 + n,
                product_id: "sparkling_water".into(),
                price_cents: 275,
                capacity: 15,
            })
            .collect();
        assert!(
            full.qr_payload().len() < 1_600,
            "{}",
            full.qr_payload().len()
        );
    }
}
