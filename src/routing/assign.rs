//! Assignment: which arm of a matched experiment serves a request.
//!
//! Owns: the override header, the unit key (header, cookie or body field), and the sticky
//! bucket → arm mapping. Pure: the same table, headers and random draw always
//! give the same arm; keyless requests take their bucket from the caller's RNG.
//!
//! Never: allocates on the request path (except to name the arms in an error).

use http::HeaderMap;

use super::body::BodyFields;
use super::bucket;
use super::table::{ExperimentRoute, ShadowRoute};
use crate::config::{UnitSource, BUCKETS};

/// Header that forces an arm when the experiment allows overrides.
pub const OVERRIDE_HEADER: &str = "x-abgate-arm";

/// How an arm was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    /// Index into the experiment's arms.
    pub arm: usize,
    /// Chosen by the override header: excluded from statistics.
    pub forced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("x-abgate-arm names no arm of experiment {experiment:?}; arms: {arms}")]
    UnknownArm { experiment: String, arms: String },
}

impl<A> ExperimentRoute<A> {
    /// Chooses an arm: the override header when allowed, else the unit key's
    /// sticky bucket, else `random_bucket()` (0..10_000) for keyless requests.
    pub fn assign(
        &self,
        headers: &HeaderMap,
        random_bucket: impl FnOnce() -> u32,
    ) -> Result<Assignment, AssignError> {
        self.assign_with(headers, None, random_bucket)
    }

    /// As [`ExperimentRoute::assign`], with what a peek of the body found (for
    /// `unit: { body: ... }`; `None`: unread). A body without the field, or
    /// larger than the experiment's `max_peek`, is keyless, as a request
    /// without the unit header is: its bucket comes from `random_bucket()`.
    pub fn assign_with(
        &self,
        headers: &HeaderMap,
        body: Option<&BodyFields<'_>>,
        random_bucket: impl FnOnce() -> u32,
    ) -> Result<Assignment, AssignError> {
        if self.allow_override {
            if let Some(v) = headers.get(OVERRIDE_HEADER) {
                let forced = self
                    .arms
                    .iter()
                    .position(|a| a.name.as_bytes() == v.as_bytes());
                return match forced {
                    Some(arm) => Ok(Assignment { arm, forced: true }),
                    None => Err(AssignError::UnknownArm {
                        experiment: self.name.clone(),
                        arms: self
                            .arms
                            .iter()
                            .map(|a| a.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                };
            }
        }
        let b = match self.unit_key_with(headers, body) {
            Some(key) => bucket::bucket(self.seed, key),
            None => random_bucket() % BUCKETS,
        };
        Ok(Assignment {
            arm: self.arm_for_bucket(b),
            forced: false,
        })
    }

    /// The unit key bytes, if the request's head carries one.
    pub fn unit_key<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        self.unit_key_with(headers, None)
    }

    /// The unit key bytes from the head or the peeked body. An empty value
    /// is no key.
    pub fn unit_key_with<'h>(
        &self,
        headers: &'h HeaderMap,
        body: Option<&'h BodyFields<'h>>,
    ) -> Option<&'h [u8]> {
        match self.unit.as_ref()? {
            UnitSource::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty()),
            UnitSource::Cookie(name) => cookie(headers, name),
            UnitSource::Body(_) => body
                .filter(|b| b.len <= self.max_peek())
                .and_then(|b| b.unit.as_deref())
                .map(str::as_bytes)
                .filter(|v| !v.is_empty()),
        }
    }

    /// The arm owning bucket `b` (0..10,000) in the experiment's layout (see
    /// `routing::layout`): one binary search over precomputed runs.
    pub fn arm_for_bucket(&self, b: u32) -> usize {
        let run = self.run_starts.partition_point(|&start| start <= b);
        // run_starts[0] == 0, so run >= 1 for every bucket.
        self.run_arms[run.saturating_sub(1)] as usize
    }
}

impl<A> ShadowRoute<A> {
    /// Whether an assigned request with unit key `key` is copied to this
    /// shadow: the key's mirror bucket is below `percent`, so a user is
    /// mirrored on every request or on none. Keyless requests draw their
    /// bucket from `random_bucket()` (0..10_000), as assignment does.
    pub fn mirrors(&self, key: Option<&[u8]>, random_bucket: impl FnOnce() -> u32) -> bool {
        if self.percent == 0 {
            return false;
        }
        let b = match key {
            Some(key) => bucket::bucket(self.seed, key),
            None => random_bucket() % BUCKETS,
        };
        b < self.percent
    }
}

/// Finds cookie `name` in the request's Cookie headers without allocating.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            (k == name.as_bytes() && !v.is_empty()).then_some(v)
        })
}
