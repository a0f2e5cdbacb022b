#!/bin/bash
# Device models seen from inside the guest: buses, CD-ROM, disk modes, serial ports.
. "$(dirname "$0")/lib.sh"

# sig FILE TEXT: write TEXT at the start of FILE
sig() { printf '%s' "$2" | dd of="$1" conv=notrunc status=none; }

# ---- legacy PC: i440fx with IDE disk and an IDE CD-ROM (ata_piix in the guest)
vmx=$(make_vm legacy "$CMDLINE" 'platform.chipset = "i440fx"' 'ide0:0.present = "TRUE"' 'ide0:0.fileName = "disk.img"' \
	'ide1:0.present = "TRUE"' 'ide1:0.deviceType = "cdrom-image"' 'ide1:0.fileName = "cd.iso"')
dir=$(dirname "$vmx")
truncate -s 1M "$dir/cd.iso"
sig "$dir/cd.iso" "VELA-ISO-IMAGE"
check "i440fx VM starts" "$VELA" vm start "$vmx"
check "i440fx guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60
check "IDE disk visible in the guest (ata_piix)" console_has "$vmx" "VELA-GUEST-DISK: sda .*first64=VELA-DISK-legacy"
check "IDE CD-ROM visible in the guest with the ISO's content" console_has "$vmx" "VELA-GUEST-DISK: sr0 .*first64=VELA-ISO-IMAGE"
check "stop" "$VELA" vm stop hard "$vmx"

# ---- pvscsi controller and a virtio-blk disk side by side
vmx=$(make_vm buses "$CMDLINE" 'scsi1.present = "TRUE"' 'scsi1.virtualDev = "pvscsi"' 'scsi1:3.present = "TRUE"' \
	'scsi1:3.fileName = "disk.img"' 'virtio0:0.present = "TRUE"' 'virtio0:0.fileName = "vdisk.img"')
dir=$(dirname "$vmx")
truncate -s 32M "$dir/vdisk.img"
sig "$dir/vdisk.img" "VELA-VIRTIO-BLK"
check "pvscsi + virtio-blk VM starts" "$VELA" vm start "$vmx"
check "guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60
check "pvscsi disk visible in the guest" console_has "$vmx" "VELA-GUEST-DISK: sda .*first64=VELA-DISK-buses"
check "virtio-blk disk visible in the guest" console_has "$vmx" "VELA-GUEST-DISK: vda sectors=65536 first64=VELA-VIRTIO-BLK"
check "stop" "$VELA" vm stop hard "$vmx"

# ---- disk modes: persistent keeps guest writes, nonpersistent drops them at power-off
vmx=$(make_vm modes "$CMDLINE" "${SCSI_DISK[@]}" 'scsi0:0.mode = "persistent"' \
	'scsi0:1.present = "TRUE"' 'scsi0:1.fileName = "np.img"' 'scsi0:1.mode = "nonpersistent"')
dir=$(dirname "$vmx")
truncate -s 16M "$dir/np.img"
sig "$dir/np.img" "VELA-NONPERSISTENT"
check "modes VM starts" "$VELA" vm start "$vmx"
check "guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60
check "guest writes to both disks" run_in_guest "$vmx" \
	"printf WRITTEN-BY-GUEST | dd of=/dev/sda conv=notrunc 2>/dev/null; printf WRITTEN-BY-GUEST | dd of=/dev/sdb conv=notrunc 2>/dev/null; sync"
check "guest reads its write back from the nonpersistent disk" run_in_guest "$vmx" \
	"for b in /sys/block/sd*; do [ \$(cat \$b/size) = 32768 ] && dd if=/dev/\${b##*/} bs=16 count=1 2>/dev/null | grep -q WRITTEN-BY-GUEST && echo NP-READBACK-OK; done"
check "nonpersistent disk serves the guest's own writes while on" console_has "$vmx" "^NP-READBACK-OK"
check "stop soft" "$VELA" vm stop soft "$vmx"
check "power cycle" "$VELA" vm start "$vmx"
check "guest is up again" wait_console "$vmx" VELA-GUEST-READY 1 60
# Disks are told apart by size (64 MiB persistent, 16 MiB nonpersistent): the
# guest may name two virtio-scsi disks in either order.
check "persistent disk kept the guest's write across the power cycle" console_has "$vmx" "VELA-GUEST-DISK: sd. sectors=131072 first64=WRITTEN-BY-GUEST"
check "nonpersistent disk lost the guest's write at power-off" console_has "$vmx" "VELA-GUEST-DISK: sd. sectors=32768 first64=VELA-NONPERSISTENT"
check "stop" "$VELA" vm stop hard "$vmx"
check "nonpersistent disk file is unchanged on the host" sh -c "head -c 18 '$dir/np.img' | grep -q VELA-NONPERSISTENT"

# undoable and append modes: test-disk-modes.sh

# ---- every device model maps to something QEMU accepts (the guest has no
# drivers for most of these; what is checked is that QEMU runs the VM)
for chipset in q35 i440fx; do
	vmx=$(make_vm "all-$chipset" "$CMDLINE" "platform.chipset = \"$chipset\"" \
		'scsi0.present = "TRUE"' 'scsi0.virtualDev = "lsilogic"' 'scsi0:0.present = "TRUE"' 'scsi0:0.fileName = "disk.img"' \
		'scsi1.present = "TRUE"' 'scsi1.virtualDev = "lsisas1068"' 'scsi1:1.present = "TRUE"' 'scsi1:1.fileName = "d1.img"' \
		'scsi2.present = "TRUE"' 'scsi2.virtualDev = "buslogic"' 'scsi2:2.present = "TRUE"' 'scsi2:2.deviceType = "cdrom-image"' \
		'scsi3.present = "TRUE"' 'scsi3.virtualDev = "pvscsi"' 'scsi3:15.present = "TRUE"' 'scsi3:15.fileName = "d2.img"' \
		'sata0.present = "TRUE"' 'sata0:5.present = "TRUE"' 'sata0:5.deviceType = "cdrom-image"' 'sata0:5.fileName = "cd.iso"' \
		'ide0:0.present = "TRUE"' 'ide0:0.fileName = "d3.img"' 'ide1:1.present = "TRUE"' 'ide1:1.deviceType = "atapi-cdrom"' \
		'floppy0.present = "TRUE"' 'floppy0.fileName = "fd.img"' \
		'ethernet0.present = "TRUE"' 'ethernet1.present = "TRUE"' 'ethernet1.virtualDev = "e1000"' \
		'ethernet2.present = "TRUE"' 'ethernet2.virtualDev = "e1000e"' 'ethernet3.present = "TRUE"' 'ethernet3.virtualDev = "vmxnet3"' \
		'ethernet4.present = "TRUE"' 'ethernet4.virtualDev = "vlance"' \
		'ethernet5.present = "TRUE"' 'ethernet5.addressType = "static"' 'ethernet5.address = "02:56:4c:80:00:05"' \
		'serial1.present = "TRUE"' 'serial1.fileType = "none"' 'serial2.present = "TRUE"' 'serial2.fileType = "file"' \
		'serial2.fileName = "com3.txt"' 'serial3.present = "TRUE"' 'serial3.fileType = "console"' 'serial3.startConnected = "FALSE"' \
		'boot.menu = "TRUE"' 'numvcpus = "2"')
	dir=$(dirname "$vmx")
	sed -i '/^serial3.fileType/d; /^serial3.startConnected/d' "$vmx"   # only one console: serial0
	echo 'serial3.fileType = "pipe"' >> "$vmx"
	echo "serial3.fileName = \"$dir/com4.sock\"" >> "$vmx"
	for f in d1 d2 d3; do truncate -s 8M "$dir/$f.img"; done
	truncate -s 1440K "$dir/fd.img"
	truncate -s 1M "$dir/cd.iso"
	check "$chipset: QEMU accepts every device model (lsilogic, sas1068, buslogic, pvscsi, ahci, ide, floppy, 5 NIC models, 4 COM ports)" "$VELA" vm start "$vmx"
	check "$chipset: the guest boots with all of them" wait_console "$vmx" VELA-GUEST-READY 1 90
	check "$chipset: the static MAC reaches the guest" sh -c "'$VELA' vm console --dump '$vmx' | grep -q '02:56:4c:80:00:05'"
	check "$chipset: approximations are noted in the VM log" grep -q "no BusLogic emulation" "$dir/vela.log"
	check "$chipset: stop" "$VELA" vm stop hard "$vmx"
done

# ---- serial ports: COM2 to a file; COM2 of two VMs wired through one pipe
vmx=$(make_vm com "$CMDLINE" 'serial1.present = "TRUE"' 'serial1.fileType = "file"' 'serial1.fileName = "com2.txt"')
dir=$(dirname "$vmx")
check "VM with a file serial port starts" "$VELA" vm start "$vmx"
check "guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60
check "guest writes to COM2" run_in_guest "$vmx" "echo HELLO-FROM-COM2 > /dev/ttyS1"
check "COM2 output landed in the file" grep -q HELLO-FROM-COM2 "$dir/com2.txt"
check "stop" "$VELA" vm stop hard "$vmx"

pipe=$VELA_HOME/com-pipe.sock
a=$(make_vm pipea "$CMDLINE" 'serial1.present = "TRUE"' 'serial1.fileType = "pipe"' "serial1.fileName = \"$pipe\"" 'serial1.pipe.endPoint = "server"')
b=$(make_vm pipeb "$CMDLINE" 'serial1.present = "TRUE"' 'serial1.fileType = "pipe"' "serial1.fileName = \"$pipe\"" 'serial1.pipe.endPoint = "client"')
check "pipe server VM starts" "$VELA" vm start "$a"
check "pipe client VM starts" "$VELA" vm start "$b"
check "both guests are up" sh -c "$(declare -f wait_console); VELA=$VELA; wait_console '$a' VELA-GUEST-READY 1 60 && wait_console '$b' VELA-GUEST-READY 1 60"
check "guest B listens on COM2" run_in_guest "$b" "stty -F /dev/ttyS1 raw -echo; (head -n1 /dev/ttyS1 | sed 's/^/B-GOT: /') & sleep 0.2"
check "guest A writes to COM2" run_in_guest "$a" "sleep 1; echo PIPE-MESSAGE-A2B > /dev/ttyS1"
check "guest B received what guest A sent through the pipe" wait_console "$b" "B-GOT: PIPE-MESSAGE-A2B" 1 20
check "stop A" "$VELA" vm stop hard "$a"
check "stop B" "$VELA" vm stop hard "$b"
finish
