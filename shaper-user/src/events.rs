//! New flows reported by the classifier through the EVENTS ring buffer.

use shaper_common::FlowEvent;

/// Reads one event record; `None` if the record has the wrong size (an object
/// built from other sources than this daemon).
pub fn parse(record: &[u8]) -> Option<FlowEvent> {
    if record.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: the record holds at least one FlowEvent, a repr(C) type valid for
    // any bit pattern; read_unaligned copes with the ring buffer's alignment.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<FlowEvent>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_the_wrong_size_are_refused() {
        let event = FlowEvent { ts_ns: 7, class: 3, ..FlowEvent::default() };
        // SAFETY: viewing a repr(C) value as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&event as *const FlowEvent).cast::<u8>(),
                std::mem::size_of::<FlowEvent>(),
            )
        };
        assert_eq!(parse(bytes), Some(event));
        assert_eq!(parse(&bytes[..100]), None);
    }
}
