//! Histograms of durations, as Prometheus keeps them: a count per bucket
//! (cumulative when written), the sum and the count, from the daemon's start.
//! Observations are whole microseconds, so counting never rounds.

/// Bucket bounds of the reconcile's wall time, microseconds: 0.5 ms to 5 s.
pub const SCAN_BOUNDS_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];

/// Bucket bounds of first packet → the daemon's decision, microseconds: 50 µs to 1 s.
pub const DECISION_BOUNDS_US: &[u64] =
    &[50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// Counts of observations by bucket (`le` the bound, inclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    bounds_us: &'static [u64],
    /// One count per bound, then the observations above the last.
    counts: Vec<u64>,
    sum_us: u64,
}

impl Histogram {
    /// An empty histogram with these bounds (ascending).
    pub fn new(bounds_us: &'static [u64]) -> Self {
        Self { bounds_us, counts: vec![0; bounds_us.len() + 1], sum_us: 0 }
    }

    pub fn observe_us(&mut self, us: u64) {
        let bucket = self.bounds_us.partition_point(|&bound| bound < us);
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }

    /// (bound in microseconds, observations at or below it), ending with
    /// (`None`: +Inf, every observation).
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        let bounds = self.bounds_us.iter().map(|&b| Some(b)).chain([None]);
        bounds
            .zip(&self.counts)
            .map(|(bound, count)| {
                total += count;
                (bound, total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_inclusive_bounds() {
        let mut h = Histogram::new(&[100, 1_000]);
        assert_eq!(h.cumulative(), [(Some(100), 0), (Some(1_000), 0), (None, 0)]);
        for us in [0, 100, 101, 1_000, 1_001, 5_000_000] {
            h.observe_us(us);
        }
        assert_eq!(h.cumulative(), [(Some(100), 2), (Some(1_000), 4), (None, 6)]);
        assert_eq!(h.count(), 6);
        assert!((h.sum_seconds() - 5.002202).abs() < 1e-9, "{}", h.sum_seconds());
    }

    #[test]
    fn written_with_le_labels_sum_and_count() {
        let mut h = Histogram::new(&[500, 1_000_000]);
        h.observe_us(250);
        h.observe_us(2_000_000);
        let mut text = super::super::text::Exposition::new(super::super::Format::Text, 0);
        text.family("shaper_scan_duration_seconds", super::super::text::Kind::Histogram, "Scans.")
            .histogram(&super::super::text::LabelSet::default(), &h);
        let text = text.finish();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "shaper_scan_duration_seconds_bucket{le=\"0.0005\"} 1",
                "shaper_scan_duration_seconds_bucket{le=\"1.0\"} 1",
                "shaper_scan_duration_seconds_bucket{le=\"+Inf\"} 2",
                "shaper_scan_duration_seconds_sum 2.00025",
                "shaper_scan_duration_seconds_count 2",
            ]
        );
    }

    #[test]
    fn the_bounds_ascend() {
        for bounds in [SCAN_BOUNDS_US, DECISION_BOUNDS_US] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
    }
}
