//! The Pod Security Standards checks: every case of `pss_cases.rs` through the guard, and
//! through the real API server's Pod Security admission (the proof that the guard's levels are
//! the ones users know).

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use workerpool_operator::guard::Level;
use workerpool_operator::guard::pss;

use crate::pss_cases::{allowed, cases, pod, worker};
use crate::support::TestNamespace;

#[test]
fn the_allowed_pod_passes_every_level() {
    for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
        assert_eq!(pss::check(&pod(allowed()), level), [], "{level}");
    }
}

#[test]
fn every_check_refuses_its_violation_and_allows_its_neighbour() {
    let cases = cases();
    let checks: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.check).collect();
    assert_eq!(
        checks.len(),
        19,
        "one case or more for each of PSA's checks: {checks:?}"
    );
    for case in cases {
        let mut violating = allowed();
        (case.violate)(&mut violating);
        let violating = pod(violating);
        let findings = pss::check(&violating, case.level);
        assert!(
            findings
                .iter()
                .any(|f| f.check == case.check && f.field.to_string() == case.field),
            "{}: expected {} to be refused at {}, got {findings:#?}",
            case.check,
            case.field,
            case.level
        );
        assert!(
            findings.iter().all(|f| f.level <= case.level),
            "{}: {findings:#?}",
            case.check
        );
        // A stricter level refuses it too; privileged allows everything, and a restricted
        // check is not part of baseline.
        assert!(
            !pss::check(&violating, Level::Restricted).is_empty(),
            "{}",
            case.check
        );
        assert_eq!(
            pss::check(&violating, Level::Privileged),
            [],
            "{}",
            case.check
        );
        if case.level == Level::Restricted {
            assert!(
                pss::check(&violating, Level::Baseline)
                    .iter()
                    .all(|f| f.field.to_string() != case.field),
                "{} is a restricted check",
                case.check
            );
        }
        let mut complying = allowed();
        (case.comply)(&mut complying);
        assert_eq!(
            pss::check(&pod(complying), Level::Restricted),
            [],
            "{}: the neighbouring Pod is allowed",
            case.check
        );
    }
}

#[test]
fn the_restricted_overrides_replace_their_baseline_checks() {
    let mut host = allowed();
    host["spec"]["volumes"] = json!([{"name": "host", "hostPath": {"path": "/"}}]);
    let checks: Vec<&str> = pss::check(&pod(host), Level::Restricted)
        .iter()
        .map(|f| f.check)
        .collect();
    assert_eq!(checks, ["restrictedVolumes"], "not hostPathVolumes as well");
    let mut caps = allowed();
    worker(&mut caps)["securityContext"]["capabilities"]["add"] = json!(["SYS_ADMIN"]);
    let checks: Vec<&str> = pss::check(&pod(caps), Level::Restricted)
        .iter()
        .map(|f| f.check)
        .collect();
    assert_eq!(checks, ["capabilities_restricted"]);
}

/// What Pod Security admission answers for `pod` in `ns` (a server-side dry run: nothing is
/// stored): `Ok(true)` admitted, `Ok(false)` refused by PodSecurity, `Err` with the API
/// server's message when it finds the Pod invalid before PSA judges it.
async fn admitted(pods: &Api<Pod>, pod: &Pod) -> anyhow::Result<Result<bool, String>> {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match pods.create(&dry_run, pod).await {
        Ok(_) => Ok(Ok(true)),
        Err(kube::Error::Api(status))
            if status.code == 403 && status.message.contains("violates PodSecurity") =>
        {
            Ok(Ok(false))
        }
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(Err(status.message)),
        Err(other) => Err(other.into()),
    }
}

/// A namespace whose Pod Security admission enforces `level` at the version the guard follows.
async fn enforcing(level: Level) -> anyhow::Result<TestNamespace> {
    let ns = TestNamespace::new(&format!("guard-psa-{level}")).await?;
    ns.kubectl([
        "label",
        "namespace",
        &ns.name,
        &format!("pod-security.kubernetes.io/enforce={level}"),
        "pod-security.kubernetes.io/enforce-version=v1.36",
    ])?;
    Ok(ns)
}

#[tokio::test]
async fn the_api_servers_pod_security_admission_agrees_with_the_guard_on_every_case()
-> anyhow::Result<()> {
    let mut compared = 0;
    let mut invalid = Vec::new();
    let mut disagreements = Vec::new();
    for level in [Level::Baseline, Level::Restricted] {
        let ns = enforcing(level).await?;
        let pods: Api<Pod> = ns.pods();
        let mut candidates = vec![("the allowed Pod".to_string(), allowed())];
        for case in cases() {
            for (what, change) in [("violating", case.violate), ("complying", case.comply)] {
                let mut value = allowed();
                change(&mut value);
                candidates.push((format!("{} ({}) {what}", case.check, case.field), value));
            }
        }
        for (name, mut value) in candidates {
            value["metadata"]["namespace"] = json!(ns.name);
            let pod = pod(value);
            let guard = pss::check(&pod, level).is_empty();
            match admitted(&pods, &pod).await? {
                Ok(psa) if psa == guard => compared += 1,
                Ok(psa) => disagreements.push(format!(
                    "{level}: {name}: Pod Security admission {} it, the guard {} it ({:?})",
                    if psa { "admits" } else { "refuses" },
                    if guard { "admits" } else { "refuses" },
                    pss::check(&pod, level),
                )),
                // Refused before admission: the guard must not admit it either.
                Err(message) if guard => disagreements.push(format!(
                    "{level}: {name}: the API server refuses it ({message}), the guard admits it"
                )),
                Err(_) => invalid.push(format!("{level}: {name}")),
            }
        }
        ns.cleanup().await?;
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    // Since 1.33 the API server itself allows an unmasked /proc only in a user namespace, so
    // PSA never sees baseline's procMount violation; the guard refuses it all the same.
    let procmount = "procMount (spec.containers[worker].securityContext.procMount) violating";
    assert_eq!(
        invalid,
        [
            format!("baseline: {procmount}"),
            format!("restricted: {procmount}")
        ],
        "the only Pods the API server finds invalid ({compared} compared)"
    );
    Ok(())
}
