//! Property tests of what the CCM reads from outside: its cloud config and
//! its flags. Arbitrary documents, mutations of the shipped example and
//! random flag lists must give a config or an error, never a panic; and a
//! config that parses keeps the namespace and labels it was given. (They
//! stand in for fuzz targets: libFuzzer needs a nightly toolchain.)

use kubevirt_ccm::cli::{Options, parse_go_duration};
use kubevirt_ccm::config::CloudConfig;
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../manifests/cloud-provider/cloud-config");

proptest! {
    // Failures print their minimal input; nothing is written to the tree.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_document_parses_or_fails_cleanly(text in ".{0,600}") {
        let _ = CloudConfig::parse(&text);
    }

    #[test]
    fn mutations_of_the_example_parse_or_fail_cleanly(at in 0usize..1200, cut in 0usize..40, insert in "[ :\\-\\[\\]{}a-z0-9'\"\n#&*!|>]{0,12}") {
        let chars: Vec<char> = EXAMPLE.chars().collect();
        let at = at.min(chars.len());
        let end = (at + cut).min(chars.len());
        let text: String = chars[..at].iter().chain(insert.chars().collect::<Vec<_>>().iter()).chain(chars[end..].iter()).collect();
        let _ = CloudConfig::parse(&text);
    }

    #[test]
    fn given_namespace_and_labels_are_kept(ns in "[a-z][a-z0-9-]{0,20}[a-z0-9]", key in "[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z]{2,5})?/[a-z]([a-z0-9-]{0,8}[a-z0-9])?", value in "[a-z0-9]{1,12}") {
        let text = format!("namespace: {ns}\ninfraLabels:\n  {key}: \"{value}\"\n");
        let parsed = CloudConfig::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.config.namespace.as_deref(), Some(ns.as_str()));
        prop_assert_eq!(parsed.config.infra_labels.get(&key), Some(&value));
    }

    #[test]
    fn flags_give_a_cli_or_an_error(args in proptest::collection::vec(prop_oneof![
        Just("--cloud-provider=kubevirt".to_string()),
        Just("--cloud-provider=aws".to_string()),
        Just("--leader-elect=maybe".to_string()),
        Just("--leader-elect-lease-duration=-5s".to_string()),
        Just("--controllers=*,-service,bogus".to_string()),
        Just("--secure-port=70000".to_string()),
        Just("-v=9".to_string()),
        "--[a-z-]{1,24}(=.{0,10})?",
        ".{0,16}",
    ], 0..6)) {
        let argv = std::iter::once("kubevirt-cloud-controller-manager".to_string()).chain(args);
        let _ = Options::parse_from(argv);
    }

    #[test]
    fn durations_parse_or_fail_cleanly(s in ".{0,24}") {
        let _ = parse_go_duration(&s);
    }
}
