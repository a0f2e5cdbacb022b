#!/bin/bash
# Write a valid NBD client session (as bytes) to $1: the seed for fuzz-nbd.
be32() { printf "\\x$(printf %02x $(($1 >> 24 & 255)))\\x$(printf %02x $(($1 >> 16 & 255)))\\x$(printf %02x $(($1 >> 8 & 255)))\\x$(printf %02x $(($1 & 255)))"; }
be16() { printf "\\x$(printf %02x $(($1 >> 8 & 255)))\\x$(printf %02x $(($1 & 255)))"; }
be64() { be32 $(($1 >> 32)); be32 $(($1 & 0xffffffff)); }
opt() { printf 'IHAVEOPT'; be32 "$1"; be32 "$2"; }
req() { be32 $((0x25609513)); be16 "$1"; be16 "$2"; be64 7; be64 "$3"; be32 "$4"; }
{
	be32 3                                        # fixed newstyle, no zeroes
	opt 8 0                                       # structured replies
	opt 10 $((4 + 4 + 4 + 4 + 15)); be32 4; printf 'fuzz'; be32 1; be32 15; printf 'base:allocation'
	opt 7 $((4 + 4 + 2)); be32 4; printf 'fuzz'; be16 0
	req 0 0 4096 512                              # read
	req 0 7 0 65536                               # block status
	req 0 1 8192 4; printf 'abcd'                 # write
	req 0 3 0 0                                   # flush
	req 0 4 0 4096                                # trim
	req 0 2 0 0                                   # disconnect
} > "$1"
