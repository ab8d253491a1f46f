//! The subcommands behind `main.rs`, one file each.

pub(crate) mod check;
pub(crate) mod explain;
pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod rotate;
pub(crate) mod run;

pub(crate) fn admin_base(mut addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}
