#!/bin/bash
# Write the seed for fuzz-vhost to $1: guest RAM with one read request on a
# ring, then the messages QEMU sends to start a vhost-user-blk queue.
le() { local v=$1 n=$2 i; for ((i = 0; i < n; i++)); do printf "\\x$(printf %02x $((v >> (8 * i) & 255)))"; done; }
desc() { le "$1" 8; le "$2" 4; le "$3" 2; le "$4" 2; }
msg() { le "$1" 4; le 1 4; le "$2" 4; }
{
	le $((0x500)) 2                                   # guest RAM bytes that follow
	{
		desc $((0x400)) 16 1 1                    # header, next 1
		desc $((0x600)) 512 3 2                   # data (device-writable), next 2
		desc $((0x900)) 1 2 0                     # status
		head -c $((0x100 - 48)) /dev/zero
		le 0 2; le 1 2; le 0 2                    # avail: flags, idx 1, ring[0] = 0
		head -c $((0x400 - 0x106)) /dev/zero
		le 0 4; le 0 4; le 8 8                    # request: read sector 8
		head -c $((0x500 - 0x410)) /dev/zero
	}
	msg 1 0                                           # GET_FEATURES
	msg 15 0                                          # GET_PROTOCOL_FEATURES
	msg 16 8; le $((1 << 9 | 1 << 3 | 1)) 8           # SET_PROTOCOL_FEATURES
	msg 2 8; le $((1 << 32 | 1 << 30)) 8              # SET_FEATURES
	msg 5 40; le 1 4; le 0 4; le 0 8; le $((0x10000)) 8; le $((0x100000)) 8; le 0 8
	msg 8 8; le 0 4; le 8 4                           # SET_VRING_NUM
	msg 9 40; le 0 4; le 0 4; le $((0x100000)) 8; le $((0x100200)) 8; le $((0x100100)) 8; le 0 8
	msg 10 8; le 0 4; le 0 4                          # SET_VRING_BASE
	msg 13 8; le 0 8                                  # SET_VRING_CALL
	msg 12 8; le 0 8                                  # SET_VRING_KICK
	msg 18 8; le 0 4; le 1 4                          # SET_VRING_ENABLE
	msg 24 72; le 0 4; le 60 4; le 0 4; head -c 60 /dev/zero   # GET_CONFIG
} > "$1"
