//! OVA: a ustar archive of an OVF 1.0 descriptor, its manifest (`.mf`, SHA256 lines) and
//! the disk as a stream-optimized VMDK, in that order as the OVF specification requires. The
//! descriptor asks for UEFI firmware, a SATA (AHCI) controller and a vmxnet3 NIC, and records
//! the raw image's digest in its annotation. The firmware is said twice, because each
//! hypervisor reads only its own extension: VMware's `vmw:Config firmware=efi`, and
//! VirtualBox's `<vbox:Machine>` (its settings XML: `<Firmware type="EFI"/>`, the SATA
//! controller with the disk attached by the `vbox:uuid` of the OVF disk, an e1000 NIC).
//! VirtualBox imports an OVF without a `vbox:Machine` as a BIOS machine, and the UEFI-only
//! disk would not boot.

use super::{tarball, vmdk};
use crate::digest::sha256_hex;
use anyhow::{bail, ensure, Context, Result};

/// Memory and CPUs the descriptor asks for; the importing user may change both.
const MEMORY_MIB: u64 = 1024;
const CPUS: u32 = 1;

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The OVF descriptor for a disk file `disk_file` of `disk_bytes` bytes holding a raw disk of
/// `capacity` bytes.
pub fn descriptor(
    name: &str,
    disk_file: &str,
    disk_bytes: u64,
    capacity: u64,
    digest_hex: &str,
) -> String {
    let name = xml_escape(name);
    let disk_file = xml_escape(disk_file);
    // VirtualBox's machine and disk uuids, derived from the image digest.
    let digest = super::uuid::digest_of(digest_hex.as_bytes());
    let disk_uuid = super::uuid::uuid_from(&digest, "ova disk");
    let vbox = vbox_machine(
        &name,
        &super::uuid::uuid_from(&digest, "ova machine"),
        &disk_uuid,
    );
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:href="{disk_file}" ovf:id="file1" ovf:size="{disk_bytes}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="{disk_uuid}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A fuse image: one app, booted by UEFI</Info>
    <Name>{name}</Name>
    <AnnotationSection>
      <Info>The fuse image this appliance holds</Info>
      <Annotation>fuse image sha256:{digest_hex}</Annotation>
    </AnnotationSection>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{CPUS} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{CPUS}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{MEMORY_MIB}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{MEMORY_MIB}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SATA Controller</rasd:Description>
        <rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>disk0</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>ethernet0</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
{vbox}  </VirtualSystem>
</Envelope>
"#
    )
}

/// VirtualBox's own machine settings (settings format 1.16, VirtualBox 6.0 and later), which
/// it prefers to the OVF items: UEFI firmware, the disk on the SATA controller's port 0 (by
/// the `vbox:uuid` of the OVF disk), an Intel PRO/1000 MT (e1000) NIC on NAT, the serial
/// port off (add one to see the console). `name` is escaped already.
fn vbox_machine(name: &str, machine_uuid: &str, disk_uuid: &str) -> String {
    format!(
        r#"    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{{{machine_uuid}}}" name="{name}" OSType="Linux_64">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware>
        <CPU count="{CPUS}">
          <PAE enabled="true"/>
          <LongMode enabled="true"/>
        </CPU>
        <Memory RAMSize="{MEMORY_MIB}"/>
        <Firmware type="EFI"/>
        <Chipset type="ICH9"/>
        <Boot>
          <Order position="1" device="HardDisk"/>
        </Boot>
        <Network>
          <Adapter slot="0" enabled="true" type="82540EM">
            <NAT/>
          </Adapter>
        </Network>
        <AudioAdapter enabled="false"/>
        <RTC localOrUTC="UTC"/>
      </Hardware>
      <StorageControllers>
        <StorageController name="SATA" type="AHCI" PortCount="1" useHostIOCache="false" Bootable="true">
          <AttachedDevice type="HardDisk" hotpluggable="false" port="0" device="0">
            <Image uuid="{{{disk_uuid}}}"/>
          </AttachedDevice>
        </StorageController>
      </StorageControllers>
    </vbox:Machine>
"#
    )
}

/// The OVA of `raw`: `<base>.ovf`, `<base>.mf`, `<base>-disk1.vmdk`.
pub fn write(raw: &[u8], base: &str, digest: &[u8; 32]) -> Result<Vec<u8>> {
    let disk_file = format!("{base}-disk1.vmdk");
    let disk = vmdk::write_stream(raw, &disk_file, digest)?;
    let ovf = descriptor(
        base,
        &disk_file,
        disk.len() as u64,
        raw.len() as u64,
        &crate::digest::hex(digest),
    );
    let ovf_file = format!("{base}.ovf");
    let mf = format!(
        "SHA256({ovf_file})= {}\nSHA256({disk_file})= {}\n",
        sha256_hex(ovf.as_bytes()),
        sha256_hex(&disk)
    );
    tarball::write(
        &[
            (&ovf_file, ovf.as_bytes()),
            (&format!("{base}.mf"), mf.as_bytes()),
            (&disk_file, &disk),
        ],
        tarball::Flavour::Ustar,
    )
}

/// What an OVA holds: the raw disk and the digest its descriptor records, if any.
pub struct Opened {
    pub raw: Vec<u8>,
    pub recorded_digest: Option<String>,
}

/// The value of attribute `attr` in the first element `<tag ...>` of `xml` (simple scan:
/// the descriptors fuse reads are its own and ovftool's, attributes in double quotes).
fn attribute(xml: &str, tag: &str, attr: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag} "))?;
    let end = start + xml[start..].find('>')?;
    let el = &xml[start..end];
    let key = format!("{attr}=\"");
    let v = el.find(&key)? + key.len();
    let len = el[v..].find('"')?;
    Some(
        el[v..v + len]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// Reads an OVA: checks every file the manifest lists (SHA256 or SHA1), then reads the
/// disk the descriptor's first file reference names (a VMDK).
pub fn read(file: &[u8]) -> Result<Opened> {
    let entries = tarball::read(file, |_| true)?;
    let only = |ext: &str| -> Result<Option<&(String, Vec<u8>)>> {
        let mut it = entries.iter().filter(|(n, _)| n.ends_with(ext));
        let first = it.next();
        ensure!(it.next().is_none(), "OVA with more than one {ext} file");
        Ok(first)
    };
    let (ovf_name, ovf) = only(".ovf")?.context("OVA without an .ovf descriptor")?;
    let ovf = String::from_utf8_lossy(ovf).into_owned();
    if let Some((mf_name, mf)) = only(".mf")? {
        // Every line names one member and its digest; every member but the manifest (and
        // a certificate signing it) is listed exactly once.
        let mut listed = std::collections::BTreeSet::new();
        for line in String::from_utf8_lossy(mf).lines() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = line.split_once(")= ").and_then(|(lhs, want)| {
                let (alg, name) = lhs.split_once('(')?;
                Some((alg, name, want.trim()))
            });
            let Some((alg, name, want)) = parsed else {
                bail!("{mf_name}: cannot parse the line {line:?}");
            };
            ensure!(
                listed.insert(name.to_string()),
                "{mf_name} lists {name} twice"
            );
            let data = &entries
                .iter()
                .find(|(n, _)| n == name)
                .with_context(|| format!("{mf_name} lists {name}, which the OVA does not hold"))?
                .1;
            let got = match alg {
                "SHA256" => sha256_hex(data),
                "SHA1" => {
                    use sha1::Digest;
                    crate::digest::hex(&sha1::Sha1::digest(data))
                }
                other => bail!("{mf_name}: digest {other} is not supported"),
            };
            ensure!(
                got.eq_ignore_ascii_case(want),
                "{name}: {alg} is {got}, {mf_name} says {want}"
            );
        }
        for (n, _) in &entries {
            ensure!(
                n == mf_name || n.ends_with(".cert") || listed.contains(n),
                "{mf_name} does not list {n}"
            );
        }
    }
    let href = attribute(&ovf, "File", "ovf:href")
        .with_context(|| format!("{ovf_name} references no file"))?;
    let disk = &entries
        .iter()
        .find(|(n, _)| *n == href)
        .with_context(|| format!("{ovf_name} references {href}, which the OVA does not hold"))?
        .1;
    let raw = vmdk::read(disk).with_context(|| format!("cannot read {href}"))?;
    let recorded_digest = match ovf.split("fuse image sha256:").nth(1) {
        None => None,
        Some(s) => {
            let hex = &s[..s.find('<').unwrap_or(s.len())];
            ensure!(
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{ovf_name} records a malformed image digest"
            );
            Some(format!("sha256:{hex}"))
        }
    };
    Ok(Opened {
        raw,
        recorded_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::sample;

    #[test]
    fn round_trip_with_manifest_check() {
        let raw = sample(2 * 1024 * 1024);
        let d = [9u8; 32];
        let ova = write(&raw, "hello-1.0.0", &d).unwrap();
        assert_eq!(write(&raw, "hello-1.0.0", &d).unwrap(), ova);
        let names: Vec<String> = tarball::read(&ova[..], |_| true)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            names,
            [
                "hello-1.0.0.ovf",
                "hello-1.0.0.mf",
                "hello-1.0.0-disk1.vmdk"
            ]
        );
        let o = read(&ova).unwrap();
        assert_eq!(o.raw, raw);
        assert_eq!(
            o.recorded_digest.unwrap(),
            format!("sha256:{}", crate::digest::hex(&d))
        );
        // A changed byte in the disk is caught by the manifest.
        let mut bad = ova.clone();
        let n = bad.len();
        bad[n - 2048] ^= 0xff;
        assert!(read(&bad).is_err());
        // Finding 5: duplicate members, and a manifest leaving a member out or with lines
        // it cannot parse.
        let entries = tarball::read(&ova[..], |_| true).unwrap();
        let pack = |e: &[(String, Vec<u8>)]| {
            let v: Vec<(&str, &[u8])> = e.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
            tarball::write(&v, tarball::Flavour::Ustar).unwrap()
        };
        assert_eq!(read(&pack(&entries)).unwrap().raw, raw);
        let mut dup = entries.clone();
        dup.push((
            entries[2].0.clone(),
            vmdk::write_stream(&sample(4096 * 1024), "x", &d).unwrap(),
        ));
        let e = format!("{:#}", read(&pack(&dup)).err().unwrap());
        assert!(e.contains("twice"), "{e}");
        let mf = String::from_utf8(entries[1].1.clone()).unwrap();
        for bad_mf in [
            mf.lines().next().unwrap().to_string() + "\n",
            mf.clone() + "garbage line\n",
            mf.clone() + "SHA256 (x)= 00\n",
        ] {
            let mut e = entries.clone();
            e[1].1 = bad_mf.into_bytes();
            assert!(
                read(&pack(&e)).is_err(),
                "{}",
                String::from_utf8_lossy(&e[1].1)
            );
        }
        let mut extra = entries.clone();
        extra.push(("notes.txt".into(), b"x".to_vec()));
        assert!(format!("{:#}", read(&pack(&extra)).err().unwrap()).contains("does not list"));
        let ovf = descriptor("a<b", "d.vmdk", 1, 2, "00");
        assert!(ovf.contains("vmw:value=\"efi\"") && ovf.contains("a&lt;b"));
        // VirtualBox's firmware setting, and its disk attachment naming the OVF disk's uuid.
        let ovf = descriptor("a", "d.vmdk", 1, 2, &crate::digest::hex(&d));
        assert!(ovf.contains("<Firmware type=\"EFI\"/>"), "{ovf}");
        let uuid = attribute(&ovf, "Disk", "vbox:uuid").unwrap();
        assert!(
            ovf.contains(&format!("<Image uuid=\"{{{uuid}}}\"/>")),
            "{ovf}"
        );
    }
}
