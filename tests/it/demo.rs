//! `abgate demo` in non-terminal mode: the README's first command tells a story
//! that ends in a decision.

use std::process::Command;

use crate::support::decision_load_blocking;

fn demo(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_abgate"))
        .arg("demo")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_default_demo_rolls_back_the_flawed_canary() {
    let _load = decision_load_blocking();
    let (ok, out) = demo(&["--duration", "30s"]);
    assert!(ok, "{out}");
    assert!(out.contains("decision: rollback"), "{out}");
    assert!(out.contains("why: rolled back"), "{out}");
    // The last lines point a newcomer at the other story, the admin API, the
    // live status and the metrics.
    let tail = out
        .split("what next:")
        .nth(1)
        .expect("a `what next:` section");
    for hint in [
        "demo --canary good",
        "http://127.0.0.1:9901/v1/experiments",
        "abgate status --watch",
        "/metrics",
    ] {
        assert!(tail.contains(hint), "missing {hint:?} in:\n{tail}");
    }
    // Plain lines, no terminal control codes, when stdout is not a terminal.
    assert!(!out.contains('\x1b'), "{out}");
}

#[test]
fn a_good_canary_is_promoted() {
    let _load = decision_load_blocking();
    let (ok, out) = demo(&["--canary", "good", "--duration", "45s"]);
    assert!(ok, "{out}");
    assert!(out.contains("decision: promote"), "{out}");
    let tail = out
        .split("what next:")
        .nth(1)
        .expect("a `what next:` section");
    assert!(tail.contains("cargo run --release -- demo\n"), "{tail}");
}

#[test]
fn the_shadow_story_catches_a_slow_candidate_before_any_user_sees_it() {
    let _load = decision_load_blocking();
    let (ok, out) = demo(&["--canary", "shadow", "--duration", "40s"]);
    assert!(ok, "{out}");
    assert!(out.contains("decision: rollback"), "{out}");
    // Caught on the mirrored copies: the live canary served nobody.
    assert!(out.contains("and 0 canary requests"), "{out}");
    assert!(out.contains("caught in shadow"), "{out}");
    let tail = out
        .split("what next:")
        .nth(1)
        .expect("a `what next:` section");
    assert!(tail.contains("cargo run --release -- demo\n"), "{tail}");
    assert!(tail.contains("demo --canary good"), "{tail}");
}
