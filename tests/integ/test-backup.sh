#!/bin/bash
# Hot backup of a guest that writes all the time: the backup holds the disk
# as it was at one instant (a prefix of the guest's ordered, synced writes),
# the running guest loses nothing, the redo log is merged back, checksums
# verify (and catch damage), the images open in qemu-img, and a restored
# copy boots and reads the same blocks from inside.
source "$(dirname "$0")/lib.sh"

N=3000 FIRST=2048
vmx=$(make_vm bk "$CMDLINE" 'virtio0:0.present = "TRUE"' 'virtio0:0.fileName = "disk.img"')
dir=$(dirname "$vmx")
out=$VELA_HOME/backups

# prefix_of RAW: how many of the blocks BLK00001.. are there, in order from
# the first, and whether everything after them is still empty.
prefix_of() {
	local raw=$1 k=0 data
	data=$(dd if="$raw" bs=512 skip=$FIRST count=$N 2>/dev/null | tr -d '\0')
	k=$(( ${#data} / 8 ))
	if [ "$data" = "$(seq -f 'BLK%05g' 1 "$k" | tr -d '\n')" ]; then echo "$k"; else echo "torn"; fi
}

check "power on" "$VELA" vm start "$vmx"
check "the guest boots" wait_console "$vmx" VELA-GUEST-READY
check "the agent runs" wait_console "$vmx" "connected to the host" 1 30
check "the guest starts writing" guest_writer_start "$vmx" $N $FIRST
sleep 4
res=$("$VELA" --json backup "$vmx" --to "$out" --quiesce)
folder=$(echo "$res" | jq -r .folder)
if [ -n "$folder" ] && [ -d "$folder" ]; then pass "hot backup while the guest writes: $folder"; else fail "backup: $res"; fi
check "it was live and quiesced" sh -c "echo '$res' | jq -e '.live and .quiesced'"
check "the VM kept running" wait_state "$vmx" on 2
check "the backup has the manifest, the .vmx and the disk" test -s "$folder/manifest.json" -a -s "$folder/bk.vmx" -a -s "$folder/virtio0-0.vmdk"
check "the redo log was merged back (the .vmx names the disk again)" grep -q 'virtio0:0.fileName = "disk.img"' "$vmx"
check "no redo log left behind" sh -c "! ls '$dir' | grep -v '^disk.img$' | grep -qE '\.(vmdk|qcow2)$'"
check "the backup's image passes qemu-img check" qemu-img check -q "$folder/virtio0-0.vmdk"
check "verify" "$VELA" backup verify "$folder"
qemu-img convert -O raw "$folder/virtio0-0.vmdk" "$VELA_HOME/backup.raw"
k=$(prefix_of "$VELA_HOME/backup.raw")
echo "the backup holds the first $k of $N blocks"
if [ "$k" != torn ] && [ "$k" -gt 0 ]; then pass "the backup is one instant: blocks 1-$k, nothing torn or out of order"; else fail "the backup is not a clean prefix ($k)"; fi
check "the rest of the disk is in the backup too" sh -c "head -c 12 '$VELA_HOME/backup.raw' | grep -q VELA-DISK-bk"

# The running guest lost nothing.
check "the writer finishes" wait_console "$vmx" WRITER-42-DONE 1 300
guest_verify "$vmx" $N $FIRST
if [ "$verify_result" = "VERIFY-42-BAD=0" ]; then pass "every block the guest wrote is on its disk ($verify_result)"; else fail "guest verify: $verify_result"; fi

# A compressed backup of the same (now finished) disk.
res2=$("$VELA" --json backup "$vmx" --to "$out" --compress)
folder2=$(echo "$res2" | jq -r .folder)
check "compressed backup" test -s "$folder2/virtio0-0.vmdk"
check "it is a streamOptimized VMDK" sh -c "qemu-img info '$folder2/virtio0-0.vmdk' | grep -q streamOptimized"
check "the compressed image equals the live disk (qemu-img compare)" qemu-img compare -U "$folder2/virtio0-0.vmdk" "$dir/disk.img"
check "the compressed backup is smaller" sh -c "[ \$(stat -c %s '$folder2/virtio0-0.vmdk') -lt \$(stat -c %s '$folder/virtio0-0.vmdk') ]"
check "stop" "$VELA" vm stop hard "$vmx"

# Restore the first (mid-write) backup as a new VM; it boots and reads
# the same blocks from inside.
check "restore as a new VM" "$VELA" restore "$folder" --to "$VELA_HOME/vms/restored" --as restored
rvmx=$VELA_HOME/vms/restored/restored.vmx
check "the restored .vmx" grep -q 'displayName = "restored"' "$rvmx"
check "the restored VM gets a new identity" grep -q 'uuid.action = "create"' "$rvmx"
check "the restored VM boots" "$VELA" vm start "$rvmx"
check "the restored guest is up" wait_console "$rvmx" VELA-GUEST-READY
check "it sees its disk" console_has "$rvmx" "first64=VELA-DISK-bk"
guest_verify "$rvmx" "$k" $FIRST
if [ "$verify_result" = "VERIFY-42-BAD=0" ]; then pass "the restored guest reads blocks 1-$k ($verify_result)"; else fail "restored verify: $verify_result"; fi
check "stop the restored VM" "$VELA" vm stop hard "$rvmx"
expect_error VELA_E_EXISTS "restore into an existing folder is refused" "$VELA" restore "$folder" --to "$VELA_HOME/vms/restored"

# Damage: a flipped byte is found, and restore refuses.
cp -r "$folder" "$VELA_HOME/damaged"
printf 'X' | dd of="$VELA_HOME/damaged/virtio0-0.vmdk" bs=1 seek=70000 conv=notrunc status=none
expect_error VELA_E_CORRUPT "verify finds the damaged image" "$VELA" backup verify "$VELA_HOME/damaged"
expect_error VELA_E_CORRUPT "restore refuses a damaged backup" "$VELA" restore "$VELA_HOME/damaged" --to "$VELA_HOME/vms/bad"
check "nothing was created by the refused restore" test ! -e "$VELA_HOME/vms/bad"
echo '{"files":[{"name":"../../etc/passwd","sha256":"00"}],"disks":[],"vmx":"x.vmx"}' > "$VELA_HOME/damaged/manifest.json"
expect_error VELA_E_CORRUPT "a manifest naming files outside the backup is refused" "$VELA" backup verify "$VELA_HOME/damaged"

# Older manifests carry SHA-256 sums (made here by sha256sum, not by Vela).
cp -r "$folder" "$VELA_HOME/oldsha"
(
	cd "$VELA_HOME/oldsha" || exit 1
	sums=$(jq -r '.files[].name' manifest.json | while read -r f; do
		jq -n --arg f "$f" --arg s "$(sha256sum "$f" | cut -d' ' -f1)" '{($f): $s}'
	done | jq -s add)
	jq --argjson sums "$sums" '.files |= map(.sha256 = $sums[.name] | del(.xxh3_128))' manifest.json > m.new && mv m.new manifest.json
)
check "a manifest of SHA-256 sums (older backups) verifies" "$VELA" backup verify "$VELA_HOME/oldsha"
printf 'X' | dd of="$VELA_HOME/oldsha/bk.vmx" bs=1 seek=10 conv=notrunc status=none
expect_error VELA_E_CORRUPT "... and a damaged file in it is found by its SHA-256" "$VELA" backup verify "$VELA_HOME/oldsha"

# An offline backup of the VM, powered off.
res3=$("$VELA" --json backup "$vmx" --to "$out")
check "offline backup" sh -c "echo '$res3' | jq -e '.live == false and .disks == 1'"

# Incremental backups with changed-block tracking (ctkEnabled): the second
# copies exactly the granules the guest wrote, builds on the first, and
# restores to the disk as it was; the map survives a clean power cycle; an
# unclean end of the VM makes the next backup a full one.
ivmx=$(make_vm inc "$CMDLINE" 'virtio0:0.present = "TRUE"' 'virtio0:0.fileName = "disk.img"' 'ctkEnabled = "TRUE"')
idir=$(dirname "$ivmx")
ib=$VELA_HOME/ibackups
check "ctk: power on" "$VELA" vm start "$ivmx"
check "ctk: the agent runs" wait_console "$ivmx" "connected to the host" 1 30
check "ctk: the map file exists while the VM runs" test -s "$idir/disk.img.ctk"
r1=$("$VELA" --json backup "$ivmx" --to "$ib" --incremental)
check "ctk: the first backup is full (nothing to build on)" sh -c "echo '$r1' | jq -e '.incremental == false'"
# Ten blocks, each in its own 64 KiB granule.
check "ctk: the guest writes 10 blocks" run_in_guest "$ivmx" 'i=1; while [ $i -le 10 ]; do printf CHANGED-$i | dd of=/dev/vda bs=512 seek=$((i*2048+4)) conv=notrunc,fsync 2>/dev/null; i=$((i+1)); done'
r2=$("$VELA" --json backup "$ivmx" --to "$ib" --incremental)
f2=$(echo "$r2" | jq -r .folder)
check "ctk: the second backup is incremental" sh -c "echo '$r2' | jq -e '.incremental == true'"
c2=$(echo "$r2" | jq -r .changed_blocks)
if [ "$c2" = 10 ]; then pass "ctk: it copied exactly the 10 changed blocks"; else fail "ctk: it copied $c2 blocks, not 10"; fi
check "ctk: the incremental image builds on the first backup's (relative link)" sh -c "jq -e '.disks[0].parent | startswith(\"../inc-\")' '$f2/manifest.json'"
check "ctk: the incremental image is small" sh -c "[ \$(stat -c %s '$f2/virtio0-0.vmdk') -lt 2000000 ]"
check "ctk: qemu-img reads the chain" qemu-img check -q "$f2/virtio0-0.vmdk"
check "ctk: verify checks the chain" sh -c "'$VELA' --json backup verify '$f2' | jq -e '.builds_on == 1'"
check "ctk: a clean power-off" "$VELA" vm stop soft "$ivmx"
check "ctk: the incremental point equals the disk (qemu-img compare)" qemu-img compare "$f2/virtio0-0.vmdk" "$idir/disk.img"
check "ctk: restore the incremental point" "$VELA" restore "$f2" --to "$VELA_HOME/vms/inc-restored" --as inc-restored
check "ctk: the restored disk equals it too" qemu-img compare "$VELA_HOME/vms/inc-restored/virtio0-0.vmdk" "$idir/disk.img"
# The map lives on through a clean power cycle.
check "ctk: power on again" "$VELA" vm start "$ivmx"
check "ctk: the guest boots again" wait_console "$ivmx" "connected to the host" 1 30
check "ctk: the guest writes 3 blocks" run_in_guest "$ivmx" 'for i in 20 21 22; do printf AGAIN | dd of=/dev/vda bs=512 seek=$((i*2048)) conv=notrunc,fsync 2>/dev/null; done'
r3=$("$VELA" --json backup "$ivmx" --to "$ib" --incremental)
if [ "$(echo "$r3" | jq -r '.incremental, .changed_blocks' | tr '\n' ' ')" = "true 3 " ]; then pass "ctk: after a power cycle, 3 changed blocks"; else fail "ctk: after a power cycle: $r3"; fi
# A damaged base breaks the chain, and verify says so.
f1=$(echo "$r1" | jq -r .folder)
cp "$f1/virtio0-0.vmdk" "$VELA_HOME/base.bak"
printf 'X' | dd of="$f1/virtio0-0.vmdk" bs=1 seek=70000 conv=notrunc status=none
expect_error VELA_E_CORRUPT "ctk: a damaged base fails the incremental's verify" "$VELA" backup verify "$f2"
cp "$VELA_HOME/base.bak" "$f1/virtio0-0.vmdk"
# Retention keeps what the newest builds on.
# An unclean end: the map is not trusted, the next backup is full.
sup=$("$VELA" --json vm status "$ivmx" | jq -r .supervisor_pid)
kill -9 "$sup"; sleep 1
pkill -9 -f "qemu.*inc" 2>/dev/null; sleep 1
check "ctk: start after the crash" "$VELA" vm start "$ivmx"
check "ctk: up after the crash" wait_console "$ivmx" "connected to the host" 1 30
r4=$("$VELA" --json backup "$ivmx" --to "$ib" --incremental)
check "ctk: after a crash the backup is full" sh -c "echo '$r4' | jq -e '.incremental == false'"
r5=$("$VELA" --json backup "$ivmx" --to "$ib" --incremental)
check "ctk: the next one is incremental again" sh -c "echo '$r5' | jq -e '.incremental == true'"
# Another tool writes the disk while the VM is off: the map cannot know.
check "ctk: a clean stop" "$VELA" vm stop soft "$ivmx"
qemu-io -f raw -c 'write -P 0x55 8M 64k' "$idir/disk.img" >/dev/null
r6=$("$VELA" --json backup "$ivmx" --to "$ib" --incremental)
check "ctk: after an outside write the (offline) backup is full" sh -c "echo '$r6' | jq -e '.incremental == false and .live == false'"
r7=$("$VELA" --json backup "$ivmx" --to "$ib" --incremental)
check "ctk: untouched since, the next offline one is incremental with nothing changed" sh -c "echo '$r7' | jq -e '.incremental == true and .changed_blocks == 0'"

# Single-file restore: a backup point's disks and partitions as read-only
# files (FUSE), loop-mounted to take a file out.  The disk has an MBR with
# an ext4 partition and a logical one (made by sfdisk and mkfs.ext4, not by
# Vela); the guest changes a file between a full and an incremental backup,
# and each point shows the file as it was then.
svmx=$(make_vm sfr "$CMDLINE" 'virtio0:0.present = "TRUE"' 'virtio0:0.fileName = "disk.img"' 'ctkEnabled = "TRUE"')
sdir=$(dirname "$svmx")
sb=$VELA_HOME/sfr-backups
mnt1=$VELA_HOME/mnt1 mnt2=$VELA_HOME/mnt2 fs1=$VELA_HOME/fs1 fs2=$VELA_HOME/fs2
mkdir -p "$mnt1" "$mnt2" "$fs1" "$fs2" "$VELA_HOME/sfr-content"
unmount_all() { for m in "$fs1" "$fs2" "$mnt1" "$mnt2"; do umount -l "$m" 2>/dev/null; done; }
trap 'unmount_all; cleanup' EXIT
printf 'label: dos\nstart=2048, size=40960, type=83\nstart=43008, type=5\nstart=45056, size=8192, type=c\n' | sfdisk -q "$sdir/disk.img"
echo "version one" > "$VELA_HOME/sfr-content/note.txt"
mkfs.ext4 -q -F -E offset=$((2048 * 512)) -d "$VELA_HOME/sfr-content" "$sdir/disk.img" 20M
check "sfr: power on" "$VELA" vm start "$svmx"
check "sfr: the agent runs" wait_console "$svmx" "connected to the host" 1 30
s1=$("$VELA" --json backup "$svmx" --to "$sb" --incremental)
sf1=$(echo "$s1" | jq -r .folder)
check "sfr: the guest mounts its partition" run_in_guest "$svmx" 'mkdir -p /mnt && mount -t ext4 /dev/vda1 /mnt && echo MOUNTED-$((40+2))'
check "sfr: ... and changes the file, adds one" run_in_guest "$svmx" 'echo "version two" > /mnt/note.txt && echo new > /mnt/added.txt && umount /mnt && echo CHANGED-$((40+2))'
s2=$("$VELA" --json backup "$svmx" --to "$sb" --incremental)
sf2=$(echo "$s2" | jq -r .folder)
check "sfr: the second backup is incremental" sh -c "echo '$s2' | jq -e '.incremental == true'"
check "sfr: stop" "$VELA" vm stop hard "$svmx"
listing=$("$VELA" --json backup mount "$sf1" "$mnt1")
check "sfr: mount the full backup point" sh -c "echo '$listing' | jq -e '.files | length == 3'"
check "sfr: the mount is there after the command returned" sh -c "grep -q ' $mnt1 fuse' /proc/mounts"
check "sfr: the partitions are where sfdisk put them (1 and logical 5)" sh -c "echo '$listing' | jq -e '[.files[] | select(.partition) | [.partition, .offset, .size]] == [[1, 1048576, 20971520], [5, 23068672, 4194304]]'"
check "sfr: the whole disk reads as the backup's image (qemu-img compare)" qemu-img compare -f raw -F vmdk "$mnt1/virtio0-0.raw" "$sf1/virtio0-0.vmdk"
check "sfr: the ext4 partition loop-mounts read-only" mount -o ro,loop "$mnt1/virtio0-0-part1.raw" "$fs1"
check "sfr: the full point has the file as it was" sh -c "[ \"\$(cat '$fs1/note.txt')\" = 'version one' ] && [ ! -e '$fs1/added.txt' ]"
"$VELA" backup mount "$sf2" "$mnt2" > /dev/null
check "sfr: the incremental point (through the backup it builds on) loop-mounts" mount -o ro,loop "$mnt2/virtio0-0-part1.raw" "$fs2"
check "sfr: it has the file as the guest changed it, and the new one" sh -c "[ \"\$(cat '$fs2/note.txt')\" = 'version two' ] && [ \"\$(cat '$fs2/added.txt')\" = new ]"
check "sfr: the logical partition is the FAT-typed one" sh -c "echo '$listing' | jq -e '.files[] | select(.partition == 5) | .type == \"mbr:0x0c\"'"
check "sfr: nothing can write to a backup point" sh -c "! (echo x >> '$mnt1/virtio0-0.raw') 2>/dev/null && ! touch '$mnt1/new' 2>/dev/null"
check "sfr: the backup still verifies" "$VELA" backup verify "$sf2"
umount "$fs1" "$fs2"
check "sfr: unmount" "$VELA" backup unmount "$mnt1"
check "sfr: unmount the other" "$VELA" backup unmount "$mnt2"
check "sfr: both mounts are gone" sh -c "! grep -qE ' ($mnt1|$mnt2) fuse' /proc/mounts"
# A GPT disk (sfdisk's) and a disk whose MBR points past its end, backed up
# offline: the partitions are where sfdisk says; the bad table is reported
# and the whole disk is still there.
gvmx=$(make_vm gpt 'scsi0.present = "TRUE"' 'scsi0:0.present = "TRUE"' 'scsi0:0.fileName = "disk.img"' \
	'scsi0:1.present = "TRUE"' 'scsi0:1.fileName = "bad.img"')
gdir=$(dirname "$gvmx")
printf 'label: gpt\nstart=2048, size=4096, name=one\nstart=8192, size=16384, name=two\n' | sfdisk -q "$gdir/disk.img"
truncate -s 8M "$gdir/bad.img"
printf 'label: dos\nstart=2048, size=4096, type=83\n' | sfdisk -q "$gdir/bad.img"
printf '\x00\x00\x01\x00' | dd of="$gdir/bad.img" bs=1 seek=$((446 + 12)) conv=notrunc status=none   # 65536 sectors: 32 MiB on an 8 MiB disk
gf=$("$VELA" --json backup "$gvmx" --to "$sb" | jq -r .folder)
glist=$("$VELA" --json backup mount "$gf" "$mnt1")
want=$(sfdisk -J "$gdir/disk.img" | jq -c '[.partitiontable.partitions[] | [.start * 512, .size * 512]]')
check "sfr: GPT partitions where sfdisk put them ($want)" sh -c "echo '$glist' | jq -e --argjson w '$want' '[.files[] | select(.disk == \"scsi0:0\" and .partition) | [.offset, .size]] == \$w'"
check "sfr: a table pointing past the disk's end is reported" sh -c "echo '$glist' | jq -e '.files[] | select(.name == \"scsi0-1.raw\") | .partition_error | test(\"past the end\")'"
check "sfr: ... and that disk is still there whole" cmp "$mnt1/scsi0-1.raw" "$gdir/bad.img"
"$VELA" backup unmount "$mnt1"
expect_error VELA_E_NOTFOUND "sfr: a folder that is no backup is refused" "$VELA" backup mount "$VELA_HOME/sfr-content" "$mnt1"
expect_error VELA_E_NOTFOUND "sfr: a missing mount point is refused" "$VELA" backup mount "$sf1" "$VELA_HOME/nowhere"
check "sfr: nothing was mounted by the refused ones" sh -c "! grep -q ' $mnt1 fuse' /proc/mounts"

# Through velad: one-off backups into a datastore with retention, and a
# schedule that runs by itself.
check "velad starts" velad_start
check "velad: register" "$VELA" vm register "$vmx"
check "velad: start" "$VELA" vm start bk
expect_error VELA_E_INVAL "velad: a backup needs a datastore" "$VELA" backup bk
expect_error VELA_E_NOTFOUND "velad: an unknown datastore is refused" "$VELA" backup bk --datastore nowhere
expect_error VELA_E_BADNAME "velad: a folder leading out of the datastore is refused" "$VELA" backup bk --datastore local --folder ../../etc
for i in 1 2 3; do
	check "velad: live backup #$i (retain 2)" "$VELA" backup bk --datastore local --retain 2
	sleep 1   # backups are named by the second
done
bdir=$VELA_HOME/datastores/local/backups
n=$(ls -d "$bdir"/bk-* 2>/dev/null | wc -l)
if [ "$n" = 2 ]; then pass "retention kept the newest 2 backups"; else fail "retention: $n backups in $bdir"; fi
check "velad: the backups verify" sh -c "for d in '$bdir'/bk-*; do '$VELA' backup verify \"\$d\" || exit 1; done"
check "velad: backup list shows the 2 kept, newest first" sh -c "'$VELA' --json backup list bk --datastore local | jq -e 'length == 2 and .[0].folder > .[1].folder and (.[0].live == true)'"
# Folders are named after the .vmx's displayName; retention and the list
# find them when the VM has another name in the inventory.
check "velad: register a VM under a name that is not its displayName" "$VELA" vm register --name renamed "$svmx"
for i in 1 2; do
	check "velad: backup #$i of it (retain 1)" "$VELA" backup renamed --datastore local --folder ren --retain 1
	sleep 1
done
n=$(ls -d "$VELA_HOME/datastores/local/ren"/sfr-* 2>/dev/null | wc -l)
if [ "$n" = 1 ]; then pass "retention found its backups (named sfr-*)"; else fail "retention under another name: $n backups"; fi
check "velad: backup list finds it too" sh -c "'$VELA' --json backup list renamed --datastore local --folder ren | jq -e 'length == 1'"
expect_error VELA_E_INVAL "velad: backup list needs a datastore" "$VELA" backup list bk
check "velad: the backup is an event" sh -c "'$VELA' event list --vm bk | grep -q vm.backup"
check "velad: a task of type vm.backup" sh -c "'$VELA' task list | grep -q vm.backup"
check "velad: schedule a backup every minute, the first now" "$VELA" backup schedule bk --datastore local --folder nightly --every 60 --retain 1 --now
check "velad: the schedule is listed" sh -c "'$VELA' backup schedule list | grep -q nightly"
for ((i = 0; i < 60; i++)); do ls "$VELA_HOME/datastores/local/nightly"/bk-*/manifest.json >/dev/null 2>&1 && break; sleep 1; done
check "velad: the scheduled backup ran by itself" sh -c "ls '$VELA_HOME/datastores/local/nightly'/bk-*/manifest.json"
check "velad: as a task of its own" sh -c "'$VELA' task list | grep -q vm.backup.scheduled"
check "velad: remove the schedule" "$VELA" backup schedule remove bk
check "velad: no schedule left" sh -c "! '$VELA' backup schedule list | grep -q nightly"
expect_error VELA_E_RANGE "velad: a schedule more often than a minute is refused" "$VELA" backup schedule bk --datastore local --every 10 --retain 1
check "velad: stop" "$VELA" vm stop bk hard
velad_stop
finish
