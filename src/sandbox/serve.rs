//! Serving the router on a loopback port, and the kubeconfig that points at it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Sandbox;

/// A sandbox listening on a socket. Drop or `shutdown` to stop it.
pub struct ServeHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Bind `addr` (loopback only: the sandbox never listens beyond this machine).
pub async fn serve(sb: Sandbox, addr: &str) -> std::io::Result<ServeHandle> {
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("listen address \"{addr}\" is not IP:PORT, e.g. 127.0.0.1:6443"),
        )
    })?;
    if !parsed.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "listen address {parsed} is not a loopback address: the sandbox only serves 127.0.0.1 or ::1"
            ),
        ));
    }
    let listener = tokio::net::TcpListener::bind(parsed).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let app = sb.router();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(ServeHandle {
        addr,
        stop: Some(stop),
        task: Some(task),
    })
}

/// A kubeconfig for a plain-HTTP loopback server (kubectl and kube-rs accept it as is).
pub fn kubeconfig_for(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {url}\n\
         contexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: sandbox\n    namespace: default\n\
         current-context: sandbox\nusers:\n- name: sandbox\n  user: {{}}\npreferences: {{}}\n"
    )
}

impl ServeHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kubeconfig(&self) -> String {
        kubeconfig_for(&self.url())
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.kubeconfig())
    }

    /// A kube client over HTTP to this server.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let url: http::Uri = self.url().parse()?;
        Ok(kube::Client::try_from(kube::Config::new(url))?)
    }

    /// Stop accepting, give open requests a second, then cut what is left (watches).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(mut t) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(1), &mut t)
                .await
                .is_err()
        {
            t.abort();
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
