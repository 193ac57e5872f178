//! Every shipped scenario parses, names only its own backends, and carries an
//! abgate config that `abgate check` would accept.

use abgate::lab::scenario::Scenario;

#[test]
fn every_scenario_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/load/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        let s = Scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        let text = s.config_text(|name| format!("http://127.0.0.1:9/{name}"));
        assert!(
            !text.contains("backend:"),
            "{}: unknown backend placeholder in\n{text}",
            f.display()
        );
        let config =
            abgate::config::parse(&text).unwrap_or_else(|e| panic!("{}:\n{e}", f.display()));
        let e = config
            .experiment(&s.experiment)
            .unwrap_or_else(|| panic!("{}: no experiment {}", f.display(), s.experiment));
        assert!(
            e.policy.is_some(),
            "{}: the watched experiment needs a kind",
            f.display()
        );
    }
}

#[test]
fn a_bad_scenario_names_its_problem() {
    let err = Scenario::parse(
        "description: x\nexperiment: e\nbackends: {}\nload: { rate: 1 }\nabgate: {}\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("duration"), "{err}");
}
