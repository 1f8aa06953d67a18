//! apply and rollback against the sandbox, through the library and the binary.

mod support;

use anyhow::Result;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_plans_a_migration_and_snapshots_the_cluster() -> Result<()> {
    let env = support::env(3).await?;
    let (saved, profile) = support::plan(&env).await?;
    let steps = saved.plan["steps"].as_array().map(Vec::len).unwrap_or(0);
    assert!(steps >= 6, "plan has {steps} steps: {}", saved.plan);
    let world = support::world(&env, &saved, &profile);
    assert!(world.release().is_some(), "the plan names the Helm release");
    assert!(!world.operator_manifest.is_empty());
    let a = support::snapshot(&env.sb)?;
    let b = support::snapshot(&env.sb)?;
    assert!(
        a.keys()
            .any(|k| k.starts_with("daemonsets.apps kube-system/calico-node"))
    );
    assert!(support::differences(&a, &b).is_empty());
    Ok(())
}
