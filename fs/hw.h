/*
 * hw.h - the hardware string H of docs/formats.md: "CPU: ... GPU: ... Memory:
 * ... DriveSerial: ...", from hardware_id when configured, else derived
 * from /proc/cpuinfo, the first display controller in /sys/bus/pci,
 * /proc/meminfo and the system disk's serial in /sys/block.
 */
#ifndef AZAION_HW_H
#define AZAION_HW_H

/* *ret malloc()ed. override: the configured hardware_id, or NULL. */
int hw_string(const char *override, char **ret);

#endif
