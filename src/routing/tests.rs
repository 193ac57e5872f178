use http::HeaderMap;

use super::*;
use crate::config;

/// A table whose arms carry their backend's name (the default route too).
fn table(yaml: &str) -> RoutingTable<String> {
    let c = config::parse(yaml).unwrap();
    RoutingTable::build(&c, |_, a| a.backend.clone(), |b| b.to_string())
}

fn split(canary: u32) -> String {
    format!(
        r#"
backends: {{ a: {{ url: "http://127.0.0.1:1" }}, b: {{ url: "http://127.0.0.1:2" }} }}
experiments:
  - name: s
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: stable, backend: a, weight: {} }}
      - {{ name: canary, backend: b, weight: {canary} }}
"#,
        100 - canary
    )
}

fn with_user(u: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-user-id", u.parse().unwrap());
    h
}

#[test]
fn ramping_the_last_arm_only_moves_units_into_it() {
    let t5 = table(&split(5));
    let t10 = table(&split(10));
    let (e5, e10) = (&t5.experiments[0], &t10.experiments[0]);
    let mut moved_in = 0;
    for i in 0..5000 {
        let h = with_user(&format!("user-{i}"));
        let a = e5.assign(&h, || unreachable!()).unwrap().arm;
        let b = e10.assign(&h, || unreachable!()).unwrap().arm;
        if a == 1 {
            assert_eq!(b, 1, "user-{i} left the canary");
        } else if b == 1 {
            moved_in += 1;
        }
    }
    // About 5% of 5000 move in; a broken split would move none or everyone.
    assert!((150..=350).contains(&moved_in), "{moved_in}");
}

#[test]
fn keyless_requests_use_the_random_bucket() {
    let t = table(&split(10));
    let e = &t.experiments[0];
    let none = HeaderMap::new();
    assert_eq!(e.assign(&none, || 0).unwrap().arm, 0);
    assert_eq!(e.assign(&none, || 8999).unwrap().arm, 0);
    assert_eq!(e.assign(&none, || 9000).unwrap().arm, 1);
    assert_eq!(e.assign(&none, || 9999).unwrap().arm, 1);
}

#[test]
fn zero_weight_arms_are_never_chosen() {
    let t = table(&split(0));
    let e = &t.experiments[0];
    for b in [0, 5000, 9999] {
        assert_eq!(e.arm_for_bucket(b), 0);
    }
    let t = table(&split(100));
    assert_eq!(t.experiments[0].arm_for_bucket(0), 1);
}

#[test]
fn override_is_honoured_only_when_allowed() {
    let mut h = with_user("u1");
    h.insert(OVERRIDE_HEADER, "canary".parse().unwrap());
    let t = table(&split(0));
    assert_eq!(
        t.experiments[0].assign(&h, || 0).unwrap(),
        Assignment {
            arm: 0,
            forced: false
        }
    );
    let allowed = split(0).replace("unit:", "allow_override: true\n    unit:");
    let t = table(&allowed);
    assert_eq!(
        t.experiments[0].assign(&h, || 0).unwrap(),
        Assignment {
            arm: 1,
            forced: true
        }
    );
    h.insert(OVERRIDE_HEADER, "nope".parse().unwrap());
    assert!(matches!(
        t.experiments[0].assign(&h, || 0),
        Err(AssignError::UnknownArm { .. })
    ));
}

#[test]
fn cookie_units_are_parsed() {
    let yaml = split(50).replace("{ header: x-user-id }", "{ cookie: uid }");
    let t = table(&yaml);
    let e = &t.experiments[0];
    let mut h = HeaderMap::new();
    h.insert("cookie", "a=1; uid=alice; b=2".parse().unwrap());
    assert_eq!(e.unit_key(&h), Some(&b"alice"[..]));
    h.insert("cookie", "uid=; other=x".parse().unwrap());
    assert_eq!(e.unit_key(&h), None);
    h.insert("cookie", "xuid=bob".parse().unwrap());
    assert_eq!(e.unit_key(&h), None);
}

#[test]
fn routes_match_in_declared_order_then_default() {
    let yaml = r#"
backends: { a: { url: "http://127.0.0.1:1" }, b: { url: "http://127.0.0.1:2" } }
default_backend: b
experiments:
  - name: first
    match: { path_prefix: /v1/a }
    arms: [ { name: x, backend: a, weight: 100 } ]
  - name: second
    match: { path_prefix: /v1 }
    arms: [ { name: x, backend: a, weight: 100 } ]
"#;
    let t = table(yaml);
    let h = HeaderMap::new();
    let name = |path| match t.route(&RequestView {
        host: None,
        path,
        headers: &h,
        body: None,
    }) {
        Route::Experiment(e) => e.name.clone(),
        Route::Default(d) => format!("default:{d}"),
        Route::NotFound => "404".into(),
        Route::NeedsBody { .. } => "peek".into(),
    };
    assert_eq!(name("/v1/a/x"), "first");
    assert_eq!(name("/v1/b"), "second");
    assert_eq!(name("/v2"), "default:b");
    let no_default = table(&yaml.replace("default_backend: b\n", ""));
    assert!(matches!(
        no_default.route(&RequestView {
            host: None,
            path: "/v2",
            headers: &h,
            body: None,
        }),
        Route::NotFound
    ));
}

fn three_arm(w: [u32; 3]) -> String {
    format!(
        r#"
backends: {{ a: {{ url: "http://127.0.0.1:1" }}, b: {{ url: "http://127.0.0.1:2" }}, c: {{ url: "http://127.0.0.1:3" }} }}
experiments:
  - name: s
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: base, backend: a, weight: {} }}
      - {{ name: t1, backend: b, weight: {} }}
      - {{ name: t2, backend: c, weight: {} }}
"#,
        w[0], w[1], w[2]
    )
}

/// The table for the last weights of `history` (percent), laid out by
/// replaying the whole history.
fn replayed(history: &[[u32; 3]]) -> RoutingTable<String> {
    let bp: Vec<Vec<u32>> = history
        .iter()
        .map(|w| w.iter().map(|p| p * 100).collect())
        .collect();
    let layout = Layout::replay(bp.iter().map(Vec::as_slice)).unwrap();
    let c = config::parse(&three_arm(*history.last().unwrap())).unwrap();
    RoutingTable::build_with(
        &c,
        |_| Some(&layout),
        |_, a| a.backend.clone(),
        |b| b.to_string(),
    )
}

#[test]
fn zeroing_a_treatment_not_next_to_the_baseline_moves_only_its_users() {
    let before = replayed(&[[34, 33, 33]]);
    let contiguous = table(&three_arm([67, 33, 0]));
    let after = replayed(&[[34, 33, 33], [67, 33, 0]]);
    let (mut moved, mut would_slide) = (0, 0);
    for i in 0..5000 {
        let h = with_user(&format!("user-{i}"));
        let a = before.experiments[0]
            .assign(&h, || unreachable!())
            .unwrap()
            .arm;
        let b = after.experiments[0]
            .assign(&h, || unreachable!())
            .unwrap()
            .arm;
        let slid = contiguous.experiments[0]
            .assign(&h, || unreachable!())
            .unwrap()
            .arm;
        if a != b {
            assert_eq!((a, b), (2, 0), "user-{i}: only t2 users move, into base");
            moved += 1;
        }
        if a == 1 && slid != 1 {
            would_slide += 1;
        }
    }
    // About a third of the users were on t2, and all of them moved.
    assert!((1500..=1800).contains(&moved), "{moved}");
    // The contiguous layout of the same weights would have moved t1's users:
    // the slide this layout exists to prevent.
    assert!(would_slide > 1000, "{would_slide}");
}

#[test]
fn a_one_vector_history_routes_as_the_contiguous_table() {
    let t = table(&three_arm([20, 30, 50]));
    let r = replayed(&[[20, 30, 50]]);
    for b in 0..crate::config::BUCKETS {
        assert_eq!(
            t.experiments[0].arm_for_bucket(b),
            r.experiments[0].arm_for_bucket(b)
        );
    }
    // A layout for other weights is not used: the table follows its weights.
    let stale = replayed(&[[20, 30, 50]]);
    let c = config::parse(&three_arm([50, 30, 20])).unwrap();
    let layout = Layout::initial(&[2000, 3000, 5000]);
    let t = RoutingTable::build_with(
        &c,
        |_| Some(&layout),
        |_, a| a.backend.clone(),
        |b| b.to_string(),
    );
    assert_eq!(t.experiments[0].arm_for_bucket(4999), 0);
    assert_eq!(stale.experiments[0].arm_for_bucket(4999), 1);
}

#[test]
fn mirroring_is_sticky_about_its_percent_and_independent_of_the_arm() {
    let yaml = r#"
backends: { a: { url: "http://127.0.0.1:1" }, b: { url: "http://127.0.0.1:2" } }
experiments:
  - name: s
    unit: { header: x-user-id }
    arms:
      - { name: stable, backend: a, weight: 50 }
      - { name: canary, backend: b, weight: 50 }
      - { name: shadow, backend: b, shadow: { percent: 20 } }
"#;
    let t = table(yaml);
    let e = &t.experiments[0];
    assert_eq!(e.arms.len(), 2);
    let s = &e.shadows[0];
    assert_eq!(
        (s.name.as_str(), s.percent, s.carry.as_str()),
        ("shadow", 2000, "b")
    );
    let (mut mirrored, mut mirrored_canary, mut canary) = (0, 0, 0);
    for i in 0..10_000 {
        let key = format!("user-{i}");
        let m = s.mirrors(Some(key.as_bytes()), || unreachable!());
        // Sticky: the same key always gives the same answer.
        assert_eq!(m, s.mirrors(Some(key.as_bytes()), || unreachable!()));
        let arm = e.assign(&with_user(&key), || unreachable!()).unwrap().arm;
        mirrored += usize::from(m);
        canary += usize::from(arm == 1);
        mirrored_canary += usize::from(m && arm == 1);
    }
    // 20% of 10,000 is 2,000 (sd 40): a generous 5-sd band.
    assert!((1800..=2200).contains(&mirrored), "{mirrored}");
    // Independent of the arm: about 20% of the canary's users are mirrored
    // too (a mirror hash equal to the assignment hash would give 0% or 40%).
    let share = mirrored_canary as f64 / canary as f64;
    assert!((0.17..=0.23).contains(&share), "{share}");
    // Keyless requests draw; 0% never mirrors, the draw decides otherwise.
    assert!(s.mirrors(None, || 1999));
    assert!(!s.mirrors(None, || 2000));
}
