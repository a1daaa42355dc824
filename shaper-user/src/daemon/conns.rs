//! `conns` at scale: the filters test what the daemon holds per flow, the
//! order is taken on numbers, and the rows (strings) are built only for the
//! flows returned: `conns --sort rate -n 10` over 100 000 flows builds ten.

use std::{cmp::Reverse, collections::HashMap};

use shaper_common::{FlowKey, FlowValue};

use super::report::View;
use crate::{
    clock,
    control::protocol::{ConnFilter, ConnRow, ConnSort},
};

impl View<'_> {
    /// The flows that pass `filter`, in its order (else by protocol and
    /// addresses), at most its limit.
    pub fn conns(&self, filter: &ConnFilter) -> Vec<ConnRow> {
        let names = self.names();
        let now = clock::monotonic_coarse_ns();
        let mut flows = self.datapath.flows();
        let mut class_passes: HashMap<u16, bool> = HashMap::new();
        flows.retain(|(key, value)| {
            let class = *class_passes
                .entry(value.class)
                .or_insert_with(|| filter.class.as_ref().is_none_or(|c| *c == names.class(value.class)));
            class && self.process_passes(filter, key)
        });
        let limit = filter.limit.unwrap_or(usize::MAX);
        let Some(sort) = filter.sort else {
            let mut rows: Vec<ConnRow> =
                flows.iter().map(|(key, value)| self.conn_row(&names, now, key, value)).collect();
            rows.sort_by(|a, b| (&a.proto, &a.local, &a.remote).cmp(&(&b.proto, &b.local, &b.remote)));
            rows.truncate(limit);
            return rows;
        };
        // Ties in the order of the keys: the same order every time.
        flows.sort_by_cached_key(|(key, value)| (Reverse(self.measure(sort, key, value)), key_order(key)));
        flows.iter().take(limit).map(|(key, value)| self.conn_row(&names, now, key, value)).collect()
    }

    /// Whether the process behind flow `key` passes the filter's tests on processes.
    fn process_passes(&self, filter: &ConnFilter, key: &FlowKey) -> bool {
        if filter.pid.is_none() && filter.user.is_none() && filter.cmd.is_none() {
            return true;
        }
        let pid = self.decider.conn(key).map(|c| c.pid).filter(|p| *p != 0);
        let process = pid.and_then(|p| self.decider.process(p));
        let uid = process.and_then(|p| p.uid).map(|u| u.to_string());
        let user = process.and_then(|p| p.user.as_deref()).or(uid.as_deref());
        filter.matches_process(pid, user, process.and_then(|p| p.cmd.as_deref()))
    }

    /// What `sort` orders flow `key` by (the largest first).
    fn measure(&self, sort: ConnSort, key: &FlowKey, value: &FlowValue) -> u64 {
        match sort {
            ConnSort::Rate => self.rates.flow(key).map_or(0, |r| r.tx_bps.saturating_add(r.rx_bps)),
            ConnSort::Bytes => value.tx_bytes.saturating_add(value.rx_bytes),
            ConnSort::Age => self.rates.flow(key).map_or(0, |r| r.age_s),
        }
    }
}

/// Flow `key` in the order of protocol and addresses, for a stable order of ties.
fn key_order(key: &FlowKey) -> (u8, u8, [u8; 16], u16, [u8; 16], u16) {
    (key.proto, key.family, key.laddr, key.lport, key.raddr, key.rport)
}
