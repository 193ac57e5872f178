//! Configuration of one mock backend and its compact CLI form.
//!
//! CLI form (first element is the listen address, the rest are `key=value`):
//! `127.0.0.1:9001,name=canary,latency=lognormal:20:0.5,error_rate=0.1,reset_rate=0,
//! outcome_p=0.3,reward=normal:1:0.2,bytes=512,chunks=16,token_delay_ms=20,seed=7`
//! plus, for inference outcomes, `first_token_ms=150,truncate_rate=0.05,
//! length_rate=0.1,prompt_tokens=40,tokens_jitter=0.3`, `content_type=...` for
//! successful non-streaming answers, and `error_rate_after=4000:0.04` for an
//! error rate that drifts after the 4,000th request.

use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::SpecError;

/// Simulated service-time distribution, applied before the response headers are sent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LatencyDist {
    /// Always `ms` milliseconds.
    Fixed {
        /// Delay in milliseconds.
        ms: f64,
    },
    /// Normal with mean `mean_ms` and standard deviation `sd_ms` (milliseconds), negative draws clamp to 0.
    Normal {
        /// Mean in milliseconds.
        mean_ms: f64,
        /// Standard deviation in milliseconds.
        sd_ms: f64,
    },
    /// Log-normal with median `median_ms` (milliseconds) and log-space standard deviation `sigma`.
    LogNormal {
        /// Median in milliseconds (= exp(mu)).
        median_ms: f64,
        /// Standard deviation of ln(latency).
        sigma: f64,
    },
}

/// Distribution of the simulated reward reported in `x-mock-reward`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RewardDist {
    /// Always `value`.
    Fixed {
        /// The constant reward.
        value: f64,
    },
    /// Normal with the given mean and standard deviation (unbounded).
    Normal {
        /// Mean reward.
        mean: f64,
        /// Standard deviation of the reward.
        sd: f64,
    },
}

/// Shape of streamed (`"stream": true`) chat responses; also the token count reported for
/// non-streaming responses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamSpec {
    /// Number of generated tokens, i.e. SSE chunk events before `data: [DONE]`.
    pub chunks: u32,
    /// Delay between consecutive chunk events in milliseconds (the first is sent at once).
    pub token_delay_ms: f64,
}

impl Default for StreamSpec {
    fn default() -> Self {
        StreamSpec {
            chunks: 16,
            token_delay_ms: 10.0,
        }
    }
}

/// Behaviour of one simulated model backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MockSpec {
    /// Backend name, echoed in `x-mock-backend`.
    pub name: String,
    /// Service time before the response headers.
    pub latency: LatencyDist,
    /// Fraction (0..=1) of requests answered `500` with a JSON body.
    pub error_rate: f64,
    /// Fraction (0..=1) of requests whose connection is reset (SO_LINGER 0 close) without any response.
    pub reset_rate: f64,
    /// Fraction (0..=1) of requests held open without any answer until the client
    /// goes away (capped at one hour): a backend that swallows requests, so the
    /// router never records their outcome.
    pub hang_rate: f64,
    /// Probability (0..=1) that `x-mock-outcome` is 1.
    pub outcome_p: f64,
    /// Distribution of `x-mock-reward`.
    pub reward: RewardDist,
    /// Approximate size in bytes of non-streaming response bodies.
    pub response_bytes: usize,
    /// Streaming shape and token count.
    pub stream: StreamSpec,
    /// Seed of the per-server RNG: the decision sequence of a single sequential client is reproducible.
    pub seed: u64,
    /// Delay in milliseconds between a stream's role-only chunk (sent at once)
    /// and its first content chunk: the model's time to first token.
    pub first_token_ms: f64,
    /// Fraction (0..=1) of streams cut after half their tokens: the body ends
    /// cleanly but without a finish reason, a usage chunk or `[DONE]`.
    pub truncate_rate: f64,
    /// Fraction (0..=1) of responses that end with `finish_reason: "length"`.
    pub length_rate: f64,
    /// Prompt tokens reported in `usage`; 0 estimates them from the request
    /// (a token per 4 characters of message content, at least 1).
    pub prompt_tokens: u32,
    /// Completion tokens vary per request, uniformly within
    /// `chunks × [1 - tokens_jitter, 1 + tokens_jitter]` (0..1; 0 = always `chunks`).
    pub tokens_jitter: f64,
    /// `Content-Type` of successful non-streaming answers, `application/json`
    /// when unset. Another type serves the same bytes to a router that does
    /// not read them: a load harness's baseline for the cost of scanning JSON.
    #[serde(default)]
    pub content_type: Option<String>,
    /// A drift: from the given request on (counted from 1 in arrival order),
    /// the error rate is `rate` instead of `error_rate`. A count rather than
    /// a time, so a seeded run drifts at the same request every time.
    #[serde(default)]
    pub error_rate_after: Option<RateAfter>,
}

/// A rate that takes over after a number of requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateAfter {
    /// Requests served at the old rate.
    pub requests: u64,
    /// The new rate (0..=1).
    pub rate: f64,
}

impl Default for MockSpec {
    fn default() -> Self {
        MockSpec {
            name: "mock".to_string(),
            latency: LatencyDist::Fixed { ms: 0.0 },
            error_rate: 0.0,
            reset_rate: 0.0,
            hang_rate: 0.0,
            outcome_p: 0.5,
            reward: RewardDist::Fixed { value: 0.0 },
            response_bytes: 256,
            stream: StreamSpec::default(),
            seed: 0,
            first_token_ms: 0.0,
            truncate_rate: 0.0,
            length_rate: 0.0,
            prompt_tokens: 0,
            tokens_jitter: 0.0,
            content_type: None,
            error_rate_after: None,
        }
    }
}

impl MockSpec {
    /// Checks ranges: probabilities in `[0, 1]`, non-negative and finite latencies and deviations.
    pub fn validate(&self) -> Result<(), SpecError> {
        let prob = |key: &'static str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(SpecError::OutOfRange {
                    key,
                    value: v.to_string(),
                })
            }
        };
        prob("error_rate", self.error_rate)?;
        if let Some(a) = self.error_rate_after {
            prob("error_rate_after", a.rate)?;
        }
        prob("reset_rate", self.reset_rate)?;
        prob("hang_rate", self.hang_rate)?;
        prob("outcome_p", self.outcome_p)?;
        prob("truncate_rate", self.truncate_rate)?;
        prob("length_rate", self.length_rate)?;
        if !(0.0..1.0).contains(&self.tokens_jitter) {
            return Err(SpecError::OutOfRange {
                key: "tokens_jitter",
                value: self.tokens_jitter.to_string(),
            });
        }
        let non_neg = |key: &'static str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(SpecError::OutOfRange {
                    key,
                    value: v.to_string(),
                })
            }
        };
        match self.latency {
            LatencyDist::Fixed { ms } => non_neg("latency", ms)?,
            LatencyDist::Normal { mean_ms, sd_ms } => {
                non_neg("latency", mean_ms)?;
                non_neg("latency", sd_ms)?;
            }
            LatencyDist::LogNormal { median_ms, sigma } => {
                non_neg("latency", median_ms)?;
                non_neg("latency", sigma)?;
            }
        }
        let reward_ok = match self.reward {
            RewardDist::Fixed { value } => value.is_finite(),
            RewardDist::Normal { mean, sd } => mean.is_finite() && sd.is_finite() && sd >= 0.0,
        };
        if !reward_ok {
            return Err(SpecError::OutOfRange {
                key: "reward",
                value: format!("{:?}", self.reward),
            });
        }
        non_neg("first_token_ms", self.first_token_ms)?;
        non_neg("token_delay_ms", self.stream.token_delay_ms)
    }
}

/// Parses the `key=value,...` part of the CLI form (no address). Unknown keys are errors.
impl FromStr for MockSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = MockSpec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| SpecError::MissingValue(item.to_string()))?;
            apply_key(&mut spec, key.trim(), value.trim())?;
        }
        spec.validate()?;
        Ok(spec)
    }
}

/// A listen address plus the spec of the backend served there (one `--serve` argument).
#[derive(Debug, Clone, PartialEq)]
pub struct ServeArg {
    /// Address to bind; must be loopback.
    pub addr: SocketAddr,
    /// Backend behaviour.
    pub spec: MockSpec,
}

/// Parses `ADDR,key=value,...`; the address must be a loopback `ip:port`.
impl FromStr for ServeArg {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, rest) = s.split_once(',').unwrap_or((s, ""));
        let addr_str = addr.trim();
        let addr = if let Some(port) = addr_str.strip_prefix("localhost:") {
            format!("127.0.0.1:{port}")
        } else {
            addr_str.to_string()
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| SpecError::BadAddr(addr_str.to_string()))?;
        if !addr.ip().is_loopback() {
            return Err(SpecError::NonLoopback(addr));
        }
        Ok(ServeArg {
            addr,
            spec: rest.parse()?,
        })
    }
}

fn apply_key(spec: &mut MockSpec, key: &str, value: &str) -> Result<(), SpecError> {
    match key {
        "name" => spec.name = value.to_string(),
        "latency" => spec.latency = parse_latency(value)?,
        "error_rate" => spec.error_rate = num(key, value)?,
        "reset_rate" => spec.reset_rate = num(key, value)?,
        "hang_rate" => spec.hang_rate = num(key, value)?,
        "outcome_p" => spec.outcome_p = num(key, value)?,
        "reward" => spec.reward = parse_reward(value)?,
        "bytes" | "response_bytes" => spec.response_bytes = num(key, value)?,
        "chunks" => spec.stream.chunks = num(key, value)?,
        "token_delay_ms" => spec.stream.token_delay_ms = num(key, value)?,
        "seed" => spec.seed = num(key, value)?,
        "content_type" => spec.content_type = Some(value.to_string()),
        "first_token_ms" => spec.first_token_ms = num(key, value)?,
        "truncate_rate" => spec.truncate_rate = num(key, value)?,
        "length_rate" => spec.length_rate = num(key, value)?,
        "prompt_tokens" => spec.prompt_tokens = num(key, value)?,
        "tokens_jitter" => spec.tokens_jitter = num(key, value)?,
        // `error_rate_after=REQUESTS:RATE`
        "error_rate_after" => {
            let (n, r) = value.split_once(':').ok_or_else(|| SpecError::BadValue {
                key: key.to_string(),
                value: value.to_string(),
            })?;
            spec.error_rate_after = Some(RateAfter {
                requests: num(key, n)?,
                rate: num(key, r)?,
            });
        }
        _ => return Err(SpecError::UnknownKey(key.to_string())),
    }
    Ok(())
}

fn num<T: FromStr>(key: &str, value: &str) -> Result<T, SpecError> {
    value.parse().map_err(|_| SpecError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// `fixed:MS`, `normal:MEAN:SD`, `lognormal:MEDIAN:SIGMA`; a bare number means `fixed`.
fn parse_latency(value: &str) -> Result<LatencyDist, SpecError> {
    let parts: Vec<&str> = value.split(':').collect();
    let key = "latency";
    Ok(match parts.as_slice() {
        [ms] => LatencyDist::Fixed { ms: num(key, ms)? },
        ["fixed", ms] => LatencyDist::Fixed { ms: num(key, ms)? },
        ["normal", m, sd] => LatencyDist::Normal {
            mean_ms: num(key, m)?,
            sd_ms: num(key, sd)?,
        },
        ["lognormal", med, sigma] => LatencyDist::LogNormal {
            median_ms: num(key, med)?,
            sigma: num(key, sigma)?,
        },
        _ => {
            return Err(SpecError::BadValue {
                key: key.to_string(),
                value: value.to_string(),
            })
        }
    })
}

/// `fixed:V`, `normal:MEAN:SD`; a bare number means `fixed`.
fn parse_reward(value: &str) -> Result<RewardDist, SpecError> {
    let parts: Vec<&str> = value.split(':').collect();
    let key = "reward";
    Ok(match parts.as_slice() {
        [v] | ["fixed", v] => RewardDist::Fixed {
            value: num(key, v)?,
        },
        ["normal", m, sd] => RewardDist::Normal {
            mean: num(key, m)?,
            sd: num(key, sd)?,
        },
        _ => {
            return Err(SpecError::BadValue {
                key: key.to_string(),
                value: value.to_string(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_cli_form() {
        let arg: ServeArg = "127.0.0.1:9001,name=canary,latency=lognormal:20:0.5,error_rate=0.1,reset_rate=0,outcome_p=0.3,reward=normal:1:0.2,bytes=512,chunks=16,token_delay_ms=20,seed=7"
            .parse()
            .unwrap();
        assert_eq!(arg.addr.port(), 9001);
        assert_eq!(arg.spec.name, "canary");
        assert_eq!(
            arg.spec.latency,
            LatencyDist::LogNormal {
                median_ms: 20.0,
                sigma: 0.5
            }
        );
        assert_eq!(arg.spec.reward, RewardDist::Normal { mean: 1.0, sd: 0.2 });
        assert_eq!(arg.spec.response_bytes, 512);
        assert_eq!(arg.spec.stream.chunks, 16);
        assert_eq!(arg.spec.seed, 7);
        let arg: ServeArg = "127.0.0.1:9001,first_token_ms=150,truncate_rate=0.05,length_rate=0.1,prompt_tokens=40,tokens_jitter=0.3"
            .parse()
            .unwrap();
        assert_eq!(arg.spec.first_token_ms, 150.0);
        assert_eq!(arg.spec.truncate_rate, 0.05);
        assert_eq!(arg.spec.length_rate, 0.1);
        assert_eq!(arg.spec.prompt_tokens, 40);
        assert_eq!(arg.spec.tokens_jitter, 0.3);
        assert!("127.0.0.1:1,truncate_rate=1.5".parse::<ServeArg>().is_err());
        assert!("127.0.0.1:1,tokens_jitter=1".parse::<ServeArg>().is_err());
    }

    #[test]
    fn rejects_bad_input() {
        assert!("0.0.0.0:1,name=x".parse::<ServeArg>().is_err());
        assert!("127.0.0.1:1,error_rate=2".parse::<ServeArg>().is_err());
        assert!("127.0.0.1:1,bogus=1".parse::<ServeArg>().is_err());
        assert!("127.0.0.1:1,latency=weird:1".parse::<ServeArg>().is_err());
    }

    #[test]
    fn deserializes_from_json() {
        let spec: MockSpec = serde_json::from_str(
            r#"{"name":"a","latency":{"kind":"normal","mean_ms":5,"sd_ms":1},"error_rate":0.1}"#,
        )
        .unwrap();
        assert_eq!(spec.name, "a");
        assert_eq!(spec.error_rate, 0.1);
        assert_eq!(spec.stream, StreamSpec::default());
    }
}
