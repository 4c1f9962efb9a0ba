//! Bounds on what one caller can hold or ask for: its live streams, and its request rate.
//!
//! - **Streams** (`/views/{name}/subscribe`, `/api/dashboard/stream`): at most
//!   [`Streams::PER_TOKEN`] open per token and [`Streams::TOTAL`] in all; one more is a 429 with
//!   `Retry-After`. A stream's slot is held by its relay task and given back when the client goes
//!   away.
//! - **Requests**: a token bucket per token (GCRA, from `governor`), checked when the caller is
//!   authenticated, so every authenticated route counts; over it, a 429 with `Retry-After`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ApiError;

/// Open live streams, by token.
pub struct Streams {
    total: usize,
    per_token: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams::new(Streams::TOTAL, Streams::PER_TOKEN)
    }
}

impl Streams {
    pub const TOTAL: usize = 1024;
    pub const PER_TOKEN: usize = 8;

    pub fn new(total: usize, per_token: usize) -> Streams {
        Streams {
            total,
            per_token,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more stream of `token`, or a 429 saying which bound was hit.
    pub fn admit(self: &Arc<Self>, token: &str) -> Result<Arc<StreamSlot>, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let all: usize = open.values().sum();
        let mine = open.get(token).copied().unwrap_or(0);
        let refusal = if mine >= self.per_token {
            Some(format!(
                "this token already holds {mine} live streams (at most {}); close one first",
                self.per_token
            ))
        } else if all >= self.total {
            Some(format!(
                "the server holds {all} live streams, its limit; retry later"
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            return Err(
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", why)
                    .with_retry_after(5),
            );
        }
        *open.entry(token.to_owned()).or_default() += 1;
        Ok(Arc::new(StreamSlot {
            streams: self.clone(),
            token: token.to_owned(),
        }))
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
}

/// One open stream; dropping it gives the slot back.
pub struct StreamSlot {
    streams: Arc<Streams>,
    token: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.token);
            }
        }
    }
}

/// Requests per token: `per_second` on average, bursts of `burst`.
pub struct Rate {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl Default for Rate {
    fn default() -> Self {
        Rate::new(Rate::PER_SECOND, Rate::BURST)
    }
}

impl Rate {
    pub const PER_SECOND: u32 = 100;
    pub const BURST: u32 = 200;

    pub fn new(per_second: u32, burst: u32) -> Rate {
        let quota = Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Rate {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one request of `key`; a 429 with `Retry-After` when it is over its rate.
    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        // The state holds one entry per key seen: forget the idle ones now and then.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "too many requests for this token; retry in {} ms",
                        wait.as_millis()
                    ),
                )
                .with_retry_after(wait.as_secs().max(1))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_token_and_overall_and_slots_come_back() {
        let streams = Arc::new(Streams::new(3, 2));
        let a1 = streams.admit("a");
        let a2 = streams.admit("a");
        assert!(a1.is_ok() && a2.is_ok());
        let a3 = streams.admit("a").err().map(|e| (e.status, e.retry_after));
        assert_eq!(a3, Some((StatusCode::TOO_MANY_REQUESTS, Some(5))));
        let b1 = streams.admit("b");
        assert!(b1.is_ok());
        assert!(streams.admit("c").is_err(), "over the total");
        drop(a1);
        assert!(streams.admit("c").is_ok(), "a slot came back");
        drop((a2, b1));
        assert_eq!(streams.open(), 0);
    }

    #[test]
    fn a_token_over_its_rate_is_told_when_to_retry_and_others_are_not() {
        let rate = Rate::new(1, 3);
        for _ in 0..3 {
            assert!(rate.check("greedy").is_ok());
        }
        let refused = rate.check("greedy").err();
        assert_eq!(
            refused.as_ref().map(|e| (e.status, e.code)),
            Some((StatusCode::TOO_MANY_REQUESTS, "rate_limited"))
        );
        assert!(refused.and_then(|e| e.retry_after).is_some_and(|s| s >= 1));
        assert!(rate.check("other").is_ok());
    }
}
