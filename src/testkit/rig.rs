//! The rig: a seeded sandbox with its controllers and data plane, served on
//! 127.0.0.1, and a client to it.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::sandbox::controllers::{ControllerOptions, ControllersHandle, Timings};
use crate::sandbox::dataplane::{DataPlane, DataPlaneOptions};
use crate::sandbox::scenario::{self, ScenarioConfig};
use crate::sandbox::{Gvr, KubernetesVersion, ListOptions, Sandbox, SandboxOptions, ServeHandle};

/// How a rig starts.
#[derive(Debug, Clone)]
pub struct RigOptions {
    /// Seed of the sandbox's uids, generated names and fault draws.
    pub seed: u64,
    /// Simulated seconds per real second, for the controllers and the operator.
    pub time_scale: f64,
    /// The data plane's share of agnhost's probe timeouts: a blocked probe waits this
    /// much of its real timeout, so a check round fits the sandbox's fast clock.
    pub probe_timeout_scale: f64,
    /// The Kubernetes minor the sandbox serves (default: the sandbox's, 1.34).
    pub kubernetes_version: KubernetesVersion,
    /// The controllers' timings (default: the short ones the tests run with).
    pub timings: Timings,
}

impl Default for RigOptions {
    /// Time scale 100 (a simulated second is 10 ms), blocked probes at 5% of their
    /// timeout: what the step, apply and check tests run at.
    fn default() -> Self {
        RigOptions {
            seed: SandboxOptions::default().seed,
            time_scale: 100.0,
            probe_timeout_scale: 0.05,
            kubernetes_version: SandboxOptions::default().kubernetes_version,
            timings: Timings::Fast,
        }
    }
}

/// A running rig. Its fields are public so that a caller reaches the sandbox's
/// store, faults and data plane directly; [`Rig::shutdown`] stops it in order.
/// Dropping it stops the controllers and the server but leaves the data plane
/// following the store until the runtime ends, as each part does when dropped.
pub struct Rig {
    pub sb: Sandbox,
    pub controllers: ControllersHandle,
    pub dp: DataPlane,
    pub server: ServeHandle,
    /// A client over HTTP to `server`, the way `calico-migrate` reaches a cluster.
    pub client: kube::Client,
}

impl Rig {
    /// Seed a sandbox with `objects`, start the controllers and the data plane on
    /// the current Tokio runtime, serve it on a free loopback port.
    pub async fn start(objects: Vec<Value>, opts: &RigOptions) -> anyhow::Result<Rig> {
        let sb = Sandbox::new(SandboxOptions {
            seed: opts.seed,
            kubernetes_version: opts.kubernetes_version,
            ..SandboxOptions::default()
        });
        sb.load(objects).context("seeding the sandbox")?;
        let controllers = sb
            .start_controllers(ControllerOptions {
                time_scale: opts.time_scale,
                ..ControllerOptions::with_timings(opts.timings)
            })
            .context("starting the sandbox controllers")?;
        let dp = DataPlane::start(
            &sb,
            DataPlaneOptions {
                timeout_scale: opts.probe_timeout_scale,
                ..DataPlaneOptions::default()
            },
        )
        .context("starting the sandbox data plane")?;
        let server = sb
            .serve("127.0.0.1:0")
            .await
            .context("serving the sandbox on 127.0.0.1")?;
        let client = server.client()?;
        Ok(Rig {
            sb,
            controllers,
            dp,
            server,
            client,
        })
    }

    /// [`Rig::start`] on the objects of a generated scenario.
    pub async fn start_scenario(cfg: &ScenarioConfig, opts: &RigOptions) -> anyhow::Result<Rig> {
        let objects = scenario::build(cfg).context("building the sandbox scenario")?;
        Rig::start(objects, opts).await
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A kubeconfig for the server, for `calico-migrate`, kubectl and helm as processes.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        self.server.write_kubeconfig(path)
    }

    /// The sandbox's node names, sorted.
    pub fn node_names(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .sb
            .store()
            .list(&Gvr::new("", "v1", "nodes"), None, &ListOptions::default())?
            .items
            .iter()
            .filter_map(|n| n.pointer("/metadata/name")?.as_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Stop the controllers, then the data plane, then the server (open requests
    /// get a second to finish).
    pub async fn shutdown(self) {
        self.controllers.stop();
        self.dp.stop();
        self.server.shutdown().await;
    }
}
