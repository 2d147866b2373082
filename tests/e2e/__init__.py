"""End to end: real collector processes, real exporters (softflowd, pmacct, Open vSwitch), real sockets,
signals and filesystems. Slow; everything in-process is in the module-mirroring tests around it."""
