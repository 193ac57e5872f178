//! Saving a run so that a restart can read it back.
//!
//! Owns: [`saveable`]. serde_json writes a non-finite float (an infinite
//! bound, a log-likelihood of zero) as `null`, and no `f64` field reads `null`
//! back: such a run, saved, replaces the last readable one with text a restart
//! cannot resume, and the experiment's evidence would start afresh. So a run is
//! saved only once it reads back; otherwise the last saved run stays, and a
//! restart resumes from there, which loses the looks since then and no more.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The run's JSON, if it reads back as a `T`.
pub(super) fn saveable<T: Serialize + DeserializeOwned>(run: &T) -> Result<String, String> {
    let json = serde_json::to_string(run).map_err(|e| e.to_string())?;
    match serde_json::from_str::<T>(&json) {
        Ok(_) => Ok(json),
        Err(e) => Err(format!(
            "it does not read back ({e}); a non-finite number is written as null"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Evidence {
        max_log_e: f64,
        bound: Option<f64>,
    }

    #[test]
    fn a_run_with_a_non_finite_number_is_not_saved_and_a_finite_one_is() {
        let ok = Evidence {
            max_log_e: 1.5,
            bound: None,
        };
        assert_eq!(saveable(&ok).unwrap(), r#"{"max_log_e":1.5,"bound":null}"#);
        for bad in [f64::NEG_INFINITY, f64::INFINITY, f64::NAN] {
            let run = Evidence {
                max_log_e: bad,
                bound: Some(1.0),
            };
            let err = saveable(&run).unwrap_err();
            assert!(err.contains("does not read back"), "{err}");
        }
    }
}
