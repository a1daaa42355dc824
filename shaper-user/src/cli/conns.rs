//! `shaper conns` and `shaper classes` with their options: the filters,
//! order and limit of `conns` (applied by the daemon), and `--watch`.

use anyhow::Result;
use clap::Args;
use shaper_user::control::{client, ConnFilter, ConnSort};

use super::{
    args::ClientArgs,
    print::{print_classes, print_conns},
    watch::{self, WatchArgs},
};

#[derive(Args)]
pub(crate) struct ConnsArgs {
    /// Only the connections in CLASS.
    #[arg(long)]
    pub(crate) class: Option<String>,
    /// Only the connections of process PID.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// Only the connections of USER (a name, or the uid of a user without one).
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// Only the connections of processes whose command name contains CMD.
    #[arg(long)]
    pub(crate) cmd: Option<String>,
    /// Order: rate (current rate, highest first), bytes (most first), age (oldest first)
    /// [default: by protocol and addresses].
    #[arg(long, value_parser = sort_arg)]
    pub(crate) sort: Option<ConnSort>,
    /// At most N connections (after sorting).
    #[arg(short = 'n', value_name = "N")]
    pub(crate) limit: Option<usize>,
    #[command(flatten)]
    pub(crate) watch: WatchArgs,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct ClassesArgs {
    #[command(flatten)]
    pub(crate) watch: WatchArgs,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

fn sort_arg(text: &str) -> Result<ConnSort, String> {
    text.parse()
}

pub(crate) fn conns(args: &ConnsArgs) -> Result<()> {
    let socket = args.client.socket()?;
    let filter = ConnFilter {
        class: args.class.clone(),
        pid: args.pid,
        user: args.user.clone(),
        cmd: args.cmd.clone(),
        sort: args.sort,
        limit: args.limit,
    };
    watch::run(&args.watch, || {
        let rows = client::conns_filtered(&socket, filter.clone())?;
        print_conns(&rows, args.client.json)
    })
}

pub(crate) fn classes(args: &ClassesArgs) -> Result<()> {
    let socket = args.client.socket()?;
    watch::run(&args.watch, || print_classes(&client::classes(&socket)?, args.client.json))
}
