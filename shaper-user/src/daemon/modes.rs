//! What the classifier needs to know about each class beyond its leaf
//! (CLASS_MODES, see `shaper_common::instances::ClassMode`): its `per` mode,
//! and which per-packet work it needs (`MODE_*`). A class with neither pays
//! one array read per packet and nothing more.

use shaper_common::instances::{ClassMode, MODE_QUOTA};

use crate::{classids::ClassIds, config::Config};

/// The mode of every class index `ids` gives the classes of `config`
/// (indices without a class get the default: nothing to do).
pub fn class_modes(config: &Config, ids: &ClassIds) -> Vec<ClassMode> {
    let mut modes = Vec::new();
    for class in &config.classes {
        let Some(index) = ids.index(&class.name) else { continue };
        let at = usize::from(index);
        if modes.len() <= at {
            modes.resize(at + 1, ClassMode::default());
        }
        let mut flags = 0;
        if class.quota.is_some() {
            flags |= MODE_QUOTA;
        }
        modes[at] = ClassMode { per: class.per.as_ref().map_or(0, |p| p.per.mode()), flags, _pad: [0; 2] };
    }
    modes
}
