#!/bin/bash
# libvdisk against QEMU's block layer: images written by one read identically
# in the other, for every type; chains; check and repair.  No guests needed.
. "$(dirname "$0")/lib.sh"
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || { echo "SKIP: qemu-img/qemu-io missing"; exit 0; }
d=$VELA_HOME/disks
mkdir -p "$d"
cd "$d"

# The patterns: odd offsets, a run across a grain boundary, holes, the last sector.
write_patterns() {   # write_patterns FORMAT IMAGE SIZE
	local size=$3
	qemu-io -f "$1" -c "write -P 0xa1 0 512" -c "write -P 0xb2 12345 70000" -c "write -P 0xc3 1M 3M" \
		-c "write -P 0xd4 $((size / 2 + 777)) 4096" -c "write -P 0xe5 $((size - 512)) 512" "$2" | grep -c '^wrote'
}

for t in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat raw; do
	size=$((64 * 1024 * 1024))
	case $t in twoGb*) size=$((4500 * 1024 * 1024)) ;; esac   # three extents
	# QEMU writes, Vela reads.
	if [ $t = raw ]; then qemu-img create -q -f raw q-$t.img $size; else qemu-img create -q -f vmdk -o subformat=$t q-$t.img $size; fi
	fmt=vmdk; [ $t = raw ] && fmt=raw
	check "qemu-io writes the patterns into a $t image" test "$(write_patterns $fmt q-$t.img $size)" = 5
	check "$t by QEMU holds the patterns" sh -c "qemu-io -f $fmt -c 'read -P 0xe5 $((size - 512)) 512' q-$t.img | grep -q '^read 512'"
	check "$t by qemu-img/qemu-io reads identically through Vela" \
		sh -c "'$VELA' disk convert -t raw q-$t.img v-read-$t.raw >/dev/null && qemu-img compare -q q-$t.img v-read-$t.raw"
	check "$t by QEMU: vela disk map finds the data" sh -c "'$VELA' disk map q-$t.img | grep -q ' data '"
	# Vela writes, QEMU reads and checks.
	check "vela disk convert to $t" sh -c "'$VELA' disk convert -t $t v-read-$t.raw v-$t.img >/dev/null"
	if [ $t != raw ]; then
		check "$t written by Vela passes qemu-img check" qemu-img check -q v-$t.img
		check "qemu-img info sees a $t VMDK" sh -c "qemu-img info v-$t.img | grep -q 'create type: $t'"
	fi
	check "$t written by Vela equals the expected content (qemu-img compare)" qemu-img compare -q v-$t.img q-$t.img
	# Vela creates, QEMU writes into it, both read the same.
	check "vela disk create -t $t" sh -c "'$VELA' disk create -s $size -t $t -a ide c-$t.img >/dev/null"
	check "qemu-io writes into the $t image Vela created" test "$(write_patterns $fmt c-$t.img $size)" = 5
	if [ $t != raw ]; then
		check "$t created by Vela and written by QEMU passes qemu-img check" qemu-img check -q c-$t.img
		check "$t created by Vela has IDE geometry" grep -aq 'ddb.geometry.heads = "16"' c-$t.img
	fi
	check "$t created by Vela, written by QEMU, reads the same in both" \
		sh -c "'$VELA' disk convert -t raw c-$t.img c-read-$t.raw >/dev/null && qemu-img compare -q c-read-$t.raw q-$t.img"
	rm -f ./*-$t*.raw
done

# VHD: QEMU's vpc driver (fixed VHDs carry no header, so QEMU needs -f vpc).
for sub in dynamic fixed; do
	size=$((100 * 1024 * 1024))
	qemu-img create -q -f vpc -o subformat=$sub q-$sub.vhd $size
	check "qemu-io writes the patterns into a $sub VHD" test "$(write_patterns vpc q-$sub.vhd 104865792)" = 5
	qemu-img convert -f vpc -O raw q-$sub.vhd q-$sub.raw
	check "$sub VHD by QEMU reads identically through Vela (format found by itself)" \
		sh -c "'$VELA' disk convert -t raw q-$sub.vhd v-$sub.raw >/dev/null && cmp -s q-$sub.raw v-$sub.raw"
	check "vela disk info recognises the $sub VHD" sh -c "'$VELA' disk info q-$sub.vhd | grep -q 'format: vhd $sub'"
	check "$sub VHD written by Vela equals the content (qemu-img compare)" \
		sh -c "'$VELA' disk convert -t vhd-$sub q-$sub.raw w-$sub.vhd >/dev/null && qemu-img compare -q -f vpc -F raw w-$sub.vhd q-$sub.raw"
	check "QEMU sees the same size in Vela's $sub VHD" sh -c "qemu-img info -f vpc w-$sub.vhd | grep -q '(104865792 bytes)'"
	check "QEMU writes into Vela's $sub VHD" sh -c "qemu-io -f vpc -c 'write -P 0x99 7M 1M' w-$sub.vhd | grep -q wrote"
	qemu-img convert -f vpc -O raw w-$sub.vhd w-$sub.raw
	check "and Vela reads QEMU's write" sh -c "'$VELA' disk convert -t raw w-$sub.vhd w2-$sub.raw >/dev/null && cmp -s w-$sub.raw w2-$sub.raw"
	rm -f ./*-$sub.raw
done
# qcow2: both directions, compressed clusters, QEMU and Vela children, mixed chains.
size=$((100 * 1024 * 1024))
qemu-img create -q -f qcow2 q.qcow2 $size
check "qemu-io writes the patterns into a qcow2 image" test "$(write_patterns qcow2 q.qcow2 $size)" = 5
qemu-img convert -O raw q.qcow2 q-qcow2.raw
check "qcow2 by QEMU reads identically through Vela" sh -c "'$VELA' disk convert -t raw q.qcow2 v.raw >/dev/null && cmp -s v.raw q-qcow2.raw"
check "qcow2 written by Vela passes qemu-img check" sh -c "'$VELA' disk convert -t qcow2 q-qcow2.raw w.qcow2 >/dev/null && qemu-img check -q w.qcow2"
check "qcow2 written by Vela equals the content" qemu-img compare -q w.qcow2 q-qcow2.raw
check "QEMU writes into Vela's qcow2 and it stays clean" sh -c "qemu-io -c 'write -P 0x99 7M 1M' w.qcow2 | grep -q wrote && qemu-img check -q w.qcow2"
check "Vela's check agrees: no errors, no leaks" "$VELA" disk check w.qcow2
qemu-img convert -c -O qcow2 q.qcow2 comp.qcow2
check "compressed clusters read identically" sh -c "'$VELA' disk convert -t raw comp.qcow2 comp.raw >/dev/null && cmp -s comp.raw q-qcow2.raw"
cc=$("$VELA" disk addredo comp.qcow2)
qemu-io -c 'write -P 0x77 12000 100' "$cc" >/dev/null
check "a child over a compressed image: QEMU's write reads back through Vela" \
	sh -c "'$VELA' disk convert -t raw $cc cc.raw >/dev/null && qemu-img convert -O raw $cc cc-q.raw && cmp -s cc.raw cc-q.raw"
check "commit into a compressed image keeps refcounts valid (qemu-img check)" \
	sh -c "'$VELA' disk commit $cc >/dev/null && qemu-img check -q comp.qcow2 && qemu-img compare -q comp.qcow2 cc-q.raw"
cp q-qcow2.raw rawbase.img
rc=$("$VELA" disk addredo rawbase.img)
check "a raw disk's redo log is a qcow2 child" sh -c "qemu-img info $rc | grep -q 'backing file format: raw'"
qemu-io -c 'write -P 0x78 0 1M' "$rc" >/dev/null
check "mixed chain raw <- qcow2 reads identically" sh -c "qemu-img convert -O raw $rc m-q.raw && '$VELA' disk convert -t raw $rc m-v.raw >/dev/null && cmp -s m-q.raw m-v.raw"
check "a qcow2 child over a VMDK parent (clone --linked -t qcow2)" \
	sh -c "'$VELA' disk convert -t monolithicSparse q-qcow2.raw vbase.vmdk >/dev/null && '$VELA' disk clone --linked -t qcow2 vbase.vmdk vq.qcow2 >/dev/null && qemu-img info vq.qcow2 | grep -q 'backing file format: vmdk'"
qemu-io -c 'write -P 0x79 5M 3' vq.qcow2 >/dev/null
check "mixed chain vmdk <- qcow2 reads identically" sh -c "qemu-img convert -O raw vq.qcow2 vq-q.raw && '$VELA' disk convert -t raw vq.qcow2 vq-v.raw >/dev/null && cmp -s vq-q.raw vq-v.raw"
rm -f ./*.raw

# streamOptimized: QEMU writes its directory in front, Vela (like the classic
# tools) behind a footer; each reads the other's.
qemu-img create -q -f qcow2 sq.qcow2 64M
qemu-io -c 'write -P 0x5c 0 3M' -c 'write -P 0x5d 40M 100k' -c 'write -P 0x5e 67108352 512' sq.qcow2 >/dev/null
qemu-img convert -O raw sq.qcow2 sq.raw
qemu-img convert -O vmdk -o subformat=streamOptimized sq.qcow2 qs.vmdk
check "streamOptimized by QEMU reads identically through Vela" sh -c "'$VELA' disk convert -t raw qs.vmdk qs.raw >/dev/null && cmp -s qs.raw sq.raw"
check "streamOptimized by Vela passes qemu-img check" sh -c "'$VELA' disk convert -t streamOptimized sq.raw vs.vmdk >/dev/null && qemu-img check -q vs.vmdk"
check "streamOptimized by Vela equals the content" qemu-img compare -q vs.vmdk sq.raw
check "qemu-img sees Vela's streamOptimized as compressed" sh -c "qemu-img info vs.vmdk | grep -q 'compressed: true'"
check "streamOptimized by Vela is small (compressed)" test "$(stat -c %s vs.vmdk)" -lt 1000000
rm -f ./*.raw

# Differencing VHDs (QEMU cannot open them): chain against a raw reference.
"$VELA" disk convert -t vhd-dynamic q-dynamic.vhd vb.vhd >/dev/null
vc=$("$VELA" disk addredo vb.vhd)
check "addredo on a VHD makes a differencing VHD" sh -c "'$VELA' disk info $vc | grep -q 'format: vhd differencing'"
check "the differencing VHD reads as its parent" sh -c "'$VELA' disk convert -t raw $vc vc.raw >/dev/null && qemu-img compare -q -f vpc -F raw q-dynamic.vhd vc.raw"
check "the parent can be committed into (no-op child)" "$VELA" disk commit "$vc"

# Chains: a Vela redo log written by QEMU; a QEMU child of a Vela base.
qemu-img create -q -f vmdk base.vmdk 64M
qemu-io -c 'write -P 0x11 0 8M' base.vmdk >/dev/null
cp base.vmdk base.orig
child=$("$VELA" disk addredo base.vmdk)
check "addredo prints the new top file" test "$child" = "base-000001.vmdk"
check "QEMU sees the redo log's parent" sh -c "qemu-img info --backing-chain $child | grep -q 'backing file: base.vmdk'"
qemu-io -c 'write -P 0x22 4M 1M' -c 'write -P 0x33 60M 100k' "$child" >/dev/null
check "the parent's bytes did not change" cmp -s base.vmdk base.orig
check "QEMU's writes into Vela's redo log pass qemu-img check" qemu-img check -q "$child"
qemu-img convert -O raw "$child" chain-qemu.raw
check "the chain reads identically through Vela" sh -c "'$VELA' disk convert -t raw $child chain-vela.raw >/dev/null && cmp -s chain-qemu.raw chain-vela.raw"
check "vela disk info shows the chain" sh -c "'$VELA' --json disk info $child | grep -q '\"backing\"'"
check "vela disk commit merges the redo log" "$VELA" disk commit "$child"
check "after commit the base equals the flattened chain" qemu-img compare -q base.vmdk chain-qemu.raw
check "the committed base passes qemu-img check" qemu-img check -q base.vmdk
check "the merged redo log file is gone" test ! -e "$child"
qemu-img create -q -f vmdk -b base.vmdk -F vmdk qchild.vmdk
qemu-io -c 'write -P 0x44 0 64k' qchild.vmdk >/dev/null
qemu-img convert -O raw qchild.vmdk qchild.raw
check "a child made by qemu-img reads through Vela" sh -c "'$VELA' disk convert -t raw qchild.vmdk qchild-vela.raw >/dev/null && cmp -s qchild.raw qchild-vela.raw"
qemu-io -c 'write -P 0x55 0 512' base.vmdk >/dev/null
expect_error VELA_E_PARENT "a parent changed under its child is detected" "$VELA" disk info qchild.vmdk
check "linked clone: a child of a read-only base" sh -c "'$VELA' disk clone --linked base.vmdk linked.vmdk >/dev/null && qemu-img info linked.vmdk | grep -q 'backing file: base.vmdk'"
check "full clone copies the content" sh -c "'$VELA' disk clone base.vmdk full.vmdk >/dev/null && qemu-img compare -q full.vmdk base.vmdk"

# Relink after a move, commit of a middle level: QEMU follows the result.
for t in monolithicSparse qcow2; do
	e=vmdk; [ $t = qcow2 ] && e=qcow2
	mkdir -p rl-$t && cd rl-$t
	"$VELA" disk create -s 16m -t $t b.$e >/dev/null
	qemu-io -f $e -c 'write -P 0x11 0 1M' b.$e >/dev/null
	c1=$("$VELA" disk addredo b.$e); qemu-io -f $e -c 'write -P 0x22 1M 1M' "$c1" >/dev/null
	c2=$("$VELA" disk addredo "$c1"); qemu-io -f $e -c 'write -P 0x33 2M 1M' "$c2" >/dev/null
	c3=$("$VELA" disk addredo "$c2"); qemu-io -f $e -c 'write -P 0x44 3M 1M' "$c3" >/dev/null
	qemu-img convert -O raw "$c3" flat.raw
	mkdir -p moved && mv b.$e moved/
	check "$t: relink a child to its moved parent" "$VELA" disk relink "$c1" moved/b.$e
	check "$t: QEMU follows the relinked chain" sh -c "qemu-img convert -O raw $c3 after.raw && cmp -s flat.raw after.raw"
	check "$t: commit --level 1 merges the middle level" "$VELA" disk commit --level 1 "$c3"
	check "$t: QEMU reads the shortened chain the same" sh -c "qemu-img convert -O raw $c3 after2.raw && cmp -s flat.raw after2.raw"
	check "$t: the shortened chain passes qemu-img check" qemu-img check -q "$c3"
	check "$t: the merged file is gone" test ! -e "$c2"
	cd ..
done

# Extend and compact, as QEMU sees them.
for t in monolithicSparse monolithicFlat qcow2 vhd-fixed vhd-dynamic raw; do
	f=vmdk; case $t in qcow2) f=qcow2 ;; vhd*) f=vpc ;; raw) f=raw ;; esac
	rm -f ec.img ec-flat.img
	"$VELA" disk create -s 10m -t $t ec.img >/dev/null
	qemu-io -f $f -c 'write -P 0x31 9M 1M' ec.img >/dev/null
	check "$t: extend to 100 MiB" "$VELA" disk extend -s 100m ec.img
	check "$t: QEMU sees the new size" sh -c "qemu-img info -f $f ec.img | grep -q 'virtual size: 100 MiB'"
	check "$t: QEMU reads the old data and writes at the new end" \
		sh -c "qemu-io -f $f -c 'read -P 0x31 9M 1M' -c 'write -P 0x32 99M 1M' -c 'read -P 0x32 99M 1M' ec.img | grep -c '^read' | grep -qx 2"
	[ $f = vmdk ] || [ $f = qcow2 ] && check "$t: the extended image passes qemu-img check" qemu-img check -q ec.img
done
# Disks split over 2 GB extent files grow by new extent files, as the
# classic tools grow them (the existing files stay as they are).
for t in twoGbMaxExtentSparse twoGbMaxExtentFlat; do
	rm -f sx*.vmdk
	"$VELA" disk create -s 3g -t $t sx.vmdk >/dev/null
	qemu-io -f vmdk -c 'write -P 0x61 3071M 1M' sx.vmdk >/dev/null
	check "$t: extend from 3 to 6 GiB" "$VELA" disk extend -s 6g sx.vmdk
	check "$t: QEMU sees 6 GiB" sh -c "qemu-img info sx.vmdk | grep -q 'virtual size: 6 GiB'"
	check "$t: four extent files of at most 2047 MiB" sh -c "test \$(grep -a -c '^RW [0-9]* ' sx.vmdk) = 4 && grep -a '^RW ' sx.vmdk | awk '\$2 > 4192256 {bad = 1} END {exit bad}'"
	check "$t: QEMU reads the old data, writes and reads at the new end" sh -c \
		"qemu-io -f vmdk -c 'read -P 0x61 3071M 1M' -c 'write -P 0x62 6143M 1M' -c 'read -P 0x62 6143M 1M' -c 'read -P 0 4G 1M' sx.vmdk > sx.out && ! grep -q 'verification failed\|error' sx.out && test \$(grep -c '^read' sx.out) = 3"
	check "$t: the extended disk passes qemu-img check" qemu-img check -q sx.vmdk
	check "$t: vela disk check agrees" "$VELA" disk check sx.vmdk
	rm -f sx*.vmdk sx.out
done
# vmfsSparse (COWD) delta disks, as ESX made them: read for import, the same
# through Vela and through QEMU's own COWD reader; never written.
rm -f vs*.vmdk vs*.raw
"$TOP/tests/integ/cowd-image.sh" vs-delta.vmdk
"$VELA" disk create -s 1m -t monolithicFlat vsbase.vmdk >/dev/null
qemu-io -f vmdk -c 'write -P 0x6f 0 1M' vsbase.vmdk >/dev/null
printf '# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=%s\ncreateType="vmfsSparse"\nparentFileNameHint="vsbase.vmdk"\n\n# Extent description\nRW 2048 VMFSSPARSE "vs-delta.vmdk"\n\n#DDB\nddb.adapterType = "lsilogic"\n' \
	"$(grep -a '^CID=' vsbase.vmdk | cut -d= -f2)" > vs.vmdk
check "vmfsSparse: QEMU reads the delta over its parent" sh -c \
	"qemu-io -f vmdk -r -c 'read -P 0x41 0 8k' -c 'read -P 0x42 512k 8k' -c 'read -P 0x6f 8k 504k' vs.vmdk | grep -c '^read' | grep -qx 3"
check "vmfsSparse: vela disk info names the type and the parent" sh -c "'$VELA' disk info vs.vmdk | grep -q 'vmdk vmfsSparse' && '$VELA' disk info vs.vmdk | grep -q 'parent: .*vsbase.vmdk'"
check "vmfsSparse: Vela and QEMU read the same bytes" sh -c \
	"'$VELA' disk convert -t raw vs.vmdk vs-vela.raw >/dev/null && qemu-img convert -O raw vs.vmdk vs-qemu.raw && cmp -s vs-vela.raw vs-qemu.raw"
check "vmfsSparse: vela disk map shows the two grains" sh -c "test \$('$VELA' disk map vs.vmdk | grep -c ' data  *0\$') = 2"
expect_error VELA_E_READONLY "vmfsSparse: writes are refused (import only)" "$VELA" disk bench -w --count 1 vs.vmdk
check "vmfsSparse: import by conversion to monolithicSparse" sh -c \
	"'$VELA' disk convert vs.vmdk vs-import.vmdk >/dev/null && qemu-img compare -q vs-import.vmdk vs-qemu.raw"
check "vmfsSparse: commit merges the delta into its parent" "$VELA" disk commit vs.vmdk
check "vmfsSparse: ... every file of the delta is gone" sh -c "test ! -e vs.vmdk && test ! -e vs-delta.vmdk"
check "vmfsSparse: ... the parent holds the merged content (qemu-img compare)" qemu-img compare -q vsbase.vmdk vs-qemu.raw
check "ESX 2 redo log (a bare COWD file): read through Vela" sh -c \
	"'$TOP/tests/integ/cowd-image.sh' vs-redo.vmdk && '$VELA' disk convert -t raw vs-redo.vmdk vs-redo.raw >/dev/null && head -c 8192 vs-redo.raw | tr -d A | wc -c | grep -qx 0"
printf 'COWD\001\000\000\000' > vs-bad.vmdk
expect_error VELA_E_ "a truncated COWD header is refused" "$VELA" disk info vs-bad.vmdk
rm -f vs*.vmdk vs*.raw

# ESX 1.x .dsk: a flat image with a 512-byte trailer; imported without it.
rm -f esx1.*
qemu-img create -q -f raw esx1.raw 8M
qemu-io -f raw -c 'write -P 0x11 0 4k' -c 'write -P 0x22 3146752 5k' -c 'write -P 0x33 8388096 512' esx1.raw >/dev/null
cp esx1.raw esx1.dsk
head -c 512 /dev/urandom >> esx1.dsk
check "ESX 1.x .dsk: vela disk info sees the disk without its trailer" sh -c \
	"'$VELA' disk info esx1.dsk | grep -q 'esx1-dsk' && '$VELA' disk info esx1.dsk | grep -q 'size: 8388608 bytes'"
check "ESX 1.x .dsk: imported to monolithicSparse, equal to the data (qemu-img compare)" sh -c \
	"'$VELA' disk convert esx1.dsk esx1.vmdk >/dev/null && qemu-img compare -q esx1.vmdk esx1.raw"
sum=$(tail -c 512 esx1.dsk | md5sum)
check "ESX 1.x .dsk: a write at the last sector leaves the trailer alone" sh -c \
	"'$VELA' disk bench -w --bs 512 --count 2 --step 8388096 --depth 1 esx1.dsk >/dev/null && test \"\$(tail -c 512 esx1.dsk | md5sum)\" = '$sum'"
expect_error VELA_E_NOTSUP "ESX 1.x .dsk: extend is refused (the trailer sits at the end)" "$VELA" disk extend -s 16m esx1.dsk
rm -f esx1.*

# Write-behind (sequential streams pushed to the device early) changes when
# bytes reach the disk, never which: the same 1 MiB stream written with and
# without it gives images qemu-img finds clean and identical.
for f in qcow2 vmdk; do
	qemu-img create -q -f $f wb-on.$f 64M && qemu-img create -q -f $f wb-off.$f 64M
	check "$f: a deep 1 MiB write stream with write-behind" "$VELA" disk bench -w --bs 1M --count 64 --depth 8 wb-on.$f
	check "$f: ... and without (--no-write-behind)" "$VELA" disk bench -w --bs 1M --count 64 --depth 8 --no-write-behind wb-off.$f
	check "$f: ... qemu-img check is clean" qemu-img check -q -f $f wb-on.$f
	check "$f: ... both hold the same bytes (qemu-img compare)" qemu-img compare -q wb-on.$f wb-off.$f
	rm -f wb-on.$f wb-off.$f
done

for t in monolithicSparse qcow2 vhd-dynamic; do
	f=vmdk; case $t in qcow2) f=qcow2 ;; vhd*) f=vpc ;; esac
	rm -f cz.img
	"$VELA" disk create -s 64m -t $t cz.img >/dev/null
	qemu-io -f $f -c 'write -P 0x31 0 32M' -c 'write -P 0 4M 20M' cz.img >/dev/null
	qemu-img convert -f $f -O raw cz.img cz-before.raw
	before=$(du -k cz.img | cut -f1)
	check "$t: compact drops the zeroed data" sh -c "'$VELA' disk compact cz.img | grep -q '[1-9][0-9]* bytes of zeroed data dropped'"
	after=$(du -k cz.img | cut -f1)
	check "$t: compact gives the space back (${before}K -> ${after}K)" test "$after" -lt "$((before - 10000))"
	check "$t: compact keeps the content (qemu-img compare)" qemu-img compare -q -f $f -F raw cz.img cz-before.raw
	[ $f != vpc ] && check "$t: the compacted image passes qemu-img check" qemu-img check -q cz.img
done
rm -f ./*.raw

# Rename and delete know about extents and children.
mkdir -p rn && cd rn
"$VELA" disk create -s 5g -t twoGbMaxExtentFlat big.vmdk >/dev/null
qemu-io -c 'write -P 0x61 4G 1M' big.vmdk >/dev/null
"$VELA" disk clone --linked big.vmdk kid.vmdk >/dev/null
expect_error VELA_E_BUSY "delete of a disk that is a parent is refused" "$VELA" disk delete big.vmdk
check "the refused delete removed nothing" test -e big-f003.vmdk
check "rename of a split disk" "$VELA" disk rename big.vmdk renamed.vmdk
check "its extents were renamed" sh -c "test -e renamed-f001.vmdk && test -e renamed-f003.vmdk && test ! -e big-f001.vmdk && test ! -e big.vmdk"
check "the child follows the new name (QEMU sees it)" sh -c "qemu-img info kid.vmdk | grep -q 'backing file: renamed.vmdk'"
check "the child still reads the parent's data" sh -c "qemu-io -c 'read -P 0x61 4G 1M' kid.vmdk | grep -q ^read"
check "delete the child, then the parent" sh -c "'$VELA' disk delete kid.vmdk >/dev/null && '$VELA' disk delete renamed.vmdk >/dev/null"
check "nothing is left" test -z "$(ls)"
expect_error VELA_E_EXISTS "rename onto an existing file is refused" sh -c "touch a b; '$VELA' disk create -s 1m c.vmdk >/dev/null; '$VELA' disk rename c.vmdk a"
cd ..

# Leaked space after a crash: check finds it, --repair trims it.
"$VELA" disk create -s 16M leak.vmdk >/dev/null
qemu-io -c 'write -P 0x66 0 1M' leak.vmdk >/dev/null
truncate -s +192K leak.vmdk
"$VELA" disk check leak.vmdk > check.out; rc=$?
check "check reports leaked grains (exit 3, as qemu-img)" sh -c "test $rc = 3 && grep -q '3 leaked grains' check.out"
check "check --repair trims them" sh -c "'$VELA' disk check --repair leak.vmdk | grep -q repaired"
check "after repair: clean for Vela" "$VELA" disk check leak.vmdk
check "after repair: clean for qemu-img" qemu-img check -q leak.vmdk
check "after repair: data intact" sh -c "qemu-io -c 'read -P 0x66 0 1M' leak.vmdk | grep -q 'read 1048576'"
expect_error VELA_E_EXISTS "create never overwrites" "$VELA" disk create -s 1M leak.vmdk
expect_error VELA_E_INVAL "a bad size is refused" "$VELA" disk create -s 12q x.vmdk
finish
