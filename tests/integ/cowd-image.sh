#!/bin/bash
# Write a COWD sparse extent (vmfsSparse delta / ESX 2 redo log format) to $1:
# 1 MiB capacity, 8 KiB grains, one grain table; grain 0 holds 'A' (0x41),
# grain 64 (offset 512 KiB) holds 'B' (0x42), the rest is unallocated.
# Vela never writes this format; the tests check that Vela and QEMU read it
# the same.
set -e
le() { local v=$1 n=$2 i; for ((i = 0; i < n; i++)); do printf "\\x$(printf %02x $((v >> (8 * i) & 255)))"; done; }
out=$1
{
	printf 'COWD'; le 1 4; le 3 4            # magic, version 1, flags
	le 2048 4                                # capacity, sectors
	le 16 4                                  # grain, sectors
	le 4 4                                   # directory at sector 4
	le 1 4                                   # directory entries
	le 69 4                                  # next free sector
	head -c $((2048 - 32)) /dev/zero         # rest of the header
	le 5 4; head -c 508 /dev/zero            # directory: table 0 at sector 5
	{ le 37 4; head -c $((63 * 4)) /dev/zero; le 53 4; head -c $(((4096 - 65) * 4)) /dev/zero; }   # table
	head -c 8192 /dev/zero | tr '\0' 'A'     # grain at sector 37
	head -c 8192 /dev/zero | tr '\0' 'B'     # grain at sector 53
} > "$out"
