//! The disk bus of a hotplugged volume: the StorageClass parameter `bus`,
//! chosen at CreateVolume, carried in the volume context to the attach (the
//! `addvolume` disk) and to the node (how the guest names the disk).

/// A disk bus KubeVirt can hotplug on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bus {
    /// The Go driver's default, and ours.
    #[default]
    Scsi,
    Virtio,
    Sata,
}

/// A `bus` value that names none of them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("disk bus {0:?} is not supported (scsi, virtio or sata)")]
pub struct UnknownBus(pub String);

impl Bus {
    /// Parse the parameter; absent or empty means SCSI.
    pub fn parse(v: Option<&str>) -> Result<Bus, UnknownBus> {
        match v.map(str::trim).unwrap_or("") {
            "" | "scsi" => Ok(Bus::Scsi),
            "virtio" => Ok(Bus::Virtio),
            "sata" => Ok(Bus::Sata),
            other => Err(UnknownBus(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Bus::Scsi => "scsi",
            Bus::Virtio => "virtio",
            Bus::Sata => "sata",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints_and_defaults_to_scsi() {
        for bus in [Bus::Scsi, Bus::Virtio, Bus::Sata] {
            assert_eq!(Bus::parse(Some(bus.as_str())), Ok(bus));
        }
        assert_eq!(Bus::parse(None), Ok(Bus::Scsi));
        assert_eq!(Bus::parse(Some(" ")), Ok(Bus::Scsi));
        assert_eq!(Bus::parse(Some("ide")), Err(UnknownBus("ide".into())));
    }
}
