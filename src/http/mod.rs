//! The web UI and REST API. The only module that names the HTTP library.
//!
//! INTERFACE STUB (being implemented).

use std::future::Future;
use std::rc::Rc;

use crate::App;

/// Serve HTTP on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Rc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let _ = (listener, app);
    shutdown.await;
    Ok(())
}
