#!/usr/bin/env bash
# Back up a demo VM through the directory protocol, on this machine, from nothing:
# installs slapd/QEMU/libvirt if missing, starts libvirtd if none runs, starts a
# private slapd (127.0.0.1:3899, under $DEMO), defines a tiny VM (no guest OS,
# 32 MiB RAM, one qcow2 disk with a known pattern), registers it in the
# directory, backs it up with `stoney-backup backup --local`, and shows the
# files and the finished leaf. Running it again makes another backup.
#
#   bash deploy/demo.sh           run the demo
#   bash deploy/demo.sh --clean   remove the demo VM, stop the demo slapd, delete $DEMO
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEMO=${STONEY_DEMO_DIR:-/var/lib/stoney-backup-demo}
PORT=${STONEY_DEMO_PORT:-3899}
VM=demo-vm
POOL=0f83f084-8080-413e-b558-b678e504836e
NODE=$(hostname -f 2>/dev/null || hostname)
BASE='o=stepping-stone,c=ch'
SERVICE="ou=virtualization,ou=services,$BASE"
URI=qemu:///system
say() { printf '\n== %s\n' "$*"; }

if [[ ${1:-} == --clean ]]; then
  if virsh -c "$URI" dominfo "$VM" >/dev/null 2>&1; then
    virsh -c "$URI" destroy "$VM" >/dev/null 2>&1 || true
    virsh -c "$URI" undefine "$VM" >/dev/null
  fi
  [[ -s $DEMO/slapd/slapd.pid ]] && kill "$(cat "$DEMO/slapd/slapd.pid")" 2>/dev/null || true
  rm -rf "$DEMO"
  echo "demo removed"
  exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "run as root (it installs packages and starts libvirtd)" >&2; exit 1; }

say "host: packages and libvirtd"
bash deploy/setup-host.sh
if [[ ! -f dist/src/cli/main.js ]]; then
  say "npm ci (builds the CLI)"
  npm ci --no-audit --no-fund
fi

say "private slapd on 127.0.0.1:$PORT"
bash deploy/start-private-slapd.sh "$DEMO/slapd" "$PORT"
LDAP=(-x -H "ldap://127.0.0.1:$PORT/" -D "cn=admin,$BASE" -y "$DEMO/slapd/rootpw")

IMAGES=$DEMO/virtualization/vm-persistent/$POOL
mkdir -p "$IMAGES" "$DEMO/virtualization/retain" "$DEMO/backup"
DISK=$IMAGES/$VM-vda.qcow2
if ! virsh -c "$URI" dominfo "$VM" >/dev/null 2>&1; then
  say "demo VM $VM (no guest OS; disk $DISK holds pattern 0xab in its first MiB)"
  qemu-img create -q -f qcow2 "$DISK" 64M
  qemu-io -c "write -q -P 0xab 0 1M" "$DISK" >/dev/null
  type=qemu; [[ -r /dev/kvm && -w /dev/kvm ]] && type=kvm
  cat >"$DEMO/$VM.xml" <<XML
<domain type='$type'>
  <name>$VM</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$DISK'/><target dev='vda' bus='virtio'/></disk>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  virsh -c "$URI" define "$DEMO/$VM.xml" >/dev/null
fi
[[ $(virsh -c "$URI" domstate "$VM") == running ]] || virsh -c "$URI" start "$VM" >/dev/null

if ! ldapsearch "${LDAP[@]}" -LLL -s base -b "sstVirtualMachine=$VM,ou=virtual machines,$SERVICE" dn >/dev/null 2>&1; then
  say "registering $VM in the directory (node $NODE, settings on its own ou=backup)"
  ldapadd "${LDAP[@]}" >/dev/null <<LDIF
dn: sstVirtualMachine=$VM,ou=virtual machines,$SERVICE
objectClass: top
objectClass: sstVirtualizationVirtualMachine
objectClass: sstVirtualizationVirtualMachineDevices
sstVirtualMachine: $VM
sstDisplayName: stoney-backup demo VM
sstNode: $NODE
sstVirtualMachinePool: $POOL
sstVirtualMachineType: persistent
sstType: kvm
sstStatus: running
sstMemory: 33554432
sstVCPU: 1
sstClockOffset: utc
sstOnPowerOff: destroy
sstOnReboot: restart
sstOnCrash: destroy
sstOSArchitecture: x86_64
sstOSMachine: pc
sstOSType: hvm
sstOSBootDevice: hd
sstEmulator: /usr/bin/qemu-system-x86_64
sstMemBalloon: none

dn: ou=devices,sstVirtualMachine=$VM,ou=virtual machines,$SERVICE
objectClass: top
objectClass: organizationalUnit
ou: devices

dn: sstDisk=vda,ou=devices,sstVirtualMachine=$VM,ou=virtual machines,$SERVICE
objectClass: top
objectClass: sstVirtualizationVirtualMachineDisk
sstDisk: vda
sstDevice: disk
sstType: file
sstSourceFile: $DISK
sstDriverName: qemu
sstDriverType: qcow2
sstTargetBus: virtio

dn: ou=backup,sstVirtualMachine=$VM,ou=virtual machines,$SERVICE
objectClass: top
objectClass: organizationalUnit
objectClass: sstVirtualizationBackupObjectClass
ou: backup
sstBackupRootDirectory: file://$DEMO/backup
sstBackupRetainDirectory: file://$DEMO/virtualization/retain
sstBackupNumberOfIterations: 3
sstVirtualizationDiskImageOwner: root
sstVirtualizationDiskImageGroup: vm-storage
sstVirtualizationDiskImagePermission: 660
LDIF
fi

cat >"$DEMO/stoney-backup.env" <<ENV
STONEY_LDAP_URL=ldap://127.0.0.1:$PORT/
STONEY_LDAP_BIND_DN=cn=admin,$BASE
STONEY_LDAP_PASSWORD_FILE=$DEMO/slapd/rootpw
STONEY_LDAP_BASE_DN=$BASE
STONEY_NODE_NAME=$NODE
STONEY_LIBVIRT_URI=$URI
STONEY_IMAGE_ROOTS=$DEMO/virtualization
STONEY_ALLOWED_ROOTS=$DEMO/backup:$DEMO/virtualization/retain
STONEY_RUN_DIR=$DEMO/run
ENV

say "stoney-backup backup $VM --local"
node bin/stoney-backup.js backup "$VM" --local --config "$DEMO/stoney-backup.env"

say "the backups of $VM"
node bin/stoney-backup.js list "$VM" --config "$DEMO/stoney-backup.env"
latest=$(ls -1 "$DEMO/backup/vm-persistent/$POOL/$VM" | sort | tail -1)
say "files of the newest backup ($DEMO/backup/vm-persistent/$POOL/$VM/$latest)"
ls -ls "$DEMO/backup/vm-persistent/$POOL/$VM/$latest"
say "its leaf in the directory"
ldapsearch "${LDAP[@]}" -LLL -o ldif-wrap=no -s base -b "ou=$latest,ou=backup,sstVirtualMachine=$VM,ou=virtual machines,$SERVICE" \
  sstProvisioningMode sstProvisioningState sstProvisioningReturnValue sstProvisioningExecutionTime
say "the VM"
virsh -c "$URI" domstate "$VM"
qemu-img info -U "$DISK" | grep -E '^(image|backing file)' || true
echo
echo "Done. Again: bash deploy/demo.sh   Clean up: bash deploy/demo.sh --clean"
