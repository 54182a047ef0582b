/*
 * hw.c - derives the hardware string H of docs/formats.md. The original loader
 * parsed lscpu, lspci, free and /sys/block output in a way nobody
 * documented, so a device migrating from it sets hardware_id to the string
 * its old loader computed; this derivation is for new devices, and
 * `azaionctl hw` shows what it gives.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "fs/hw.h"

#define HW_FIELD_MAX 256

static void hw_trim(char *s)
{
	size_t n = strlen(s);
	char *p = s;

	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	while (isspace((unsigned char)*p))
		p++;
	memmove(s, p, strlen(p) + 1);
}

/* First line of path into out, trimmed; "" when unreadable. */
static void hw_read_line(const char *path, char *out, size_t cap)
{
	FILE *f = fopen(path, "re");

	out[0] = '\0';
	if (!f)
		return;
	if (!fgets(out, (int)cap, f))
		out[0] = '\0';
	fclose(f);
	hw_trim(out);
}

/* The value of the first "key : value" line of /proc/cpuinfo with that key. */
static void hw_cpu(char *out, size_t cap)
{
	static const char *const keys[] = {"model name", "Model", "Hardware", "CPU part"};
	char line[512];
	FILE *f;

	out[0] = '\0';
	for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]) && !out[0]; k++) {
		f = fopen("/proc/cpuinfo", "re");
		if (!f)
			return;
		while (fgets(line, sizeof(line), f)) {
			char *colon = strchr(line, ':');

			if (!colon || strncmp(line, keys[k], strlen(keys[k])) != 0)
				continue;
			snprintf(out, cap, "%s", colon + 1);
			hw_trim(out);
			break;
		}
		fclose(f);
	}
	/* Jetson boards name themselves in the device tree, not in cpuinfo. */
	if (!out[0])
		hw_read_line("/proc/device-tree/model", out, cap);
}

/* The first PCI display controller (class 0x03xxxx) as vendor:device. */
static void hw_gpu(char *out, size_t cap)
{
	DIR *d = opendir("/sys/bus/pci/devices");
	struct dirent *e;
	char path[512], cls[64], vendor[64], device[64];

	out[0] = '\0';
	if (!d)
		goto tegra;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/class", e->d_name);
		hw_read_line(path, cls, sizeof(cls));
		if (strncmp(cls, "0x03", 4) != 0)
			continue;
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vendor", e->d_name);
		hw_read_line(path, vendor, sizeof(vendor));
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/device", e->d_name);
		hw_read_line(path, device, sizeof(device));
		snprintf(out, cap, "%s:%s", vendor, device);
		break;
	}
	closedir(d);
tegra:
	/* The Orin's GPU is on the SoC, not on PCI. */
	if (!out[0])
		hw_read_line("/sys/devices/soc0/soc_id", out, cap);
	if (!out[0])
		snprintf(out, cap, "none");
}

static void hw_memory(char *out, size_t cap)
{
	char line[256];
	FILE *f = fopen("/proc/meminfo", "re");
	unsigned long long kb = 0;

	snprintf(out, cap, "unknown");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
			break;
	fclose(f);
	if (kb)
		snprintf(out, cap, "%llu kB", kb);
}

/* Serial of the first non-virtual block device (sda, nvme0n1, mmcblk0 ...). */
static void hw_serial(char *out, size_t cap)
{
	static const char *const prefixes[] = {"nvme", "sd", "mmcblk", "vd", "xvd"};
	static const char *const files[] = {"device/serial", "serial", "device/cid", "device/wwid"};
	char path[512];

	out[0] = '\0';
	for (size_t p = 0; p < sizeof(prefixes) / sizeof(prefixes[0]) && !out[0]; p++) {
		DIR *d = opendir("/sys/block");
		struct dirent *e;

		if (!d)
			break;
		while ((e = readdir(d)) && !out[0]) {
			if (strncmp(e->d_name, prefixes[p], strlen(prefixes[p])) != 0)
				continue;
			for (size_t f = 0; f < sizeof(files) / sizeof(files[0]) && !out[0]; f++) {
				snprintf(path, sizeof(path), "/sys/block/%s/%s", e->d_name,
					 files[f]);
				hw_read_line(path, out, cap);
			}
		}
		closedir(d);
	}
	if (!out[0])
		snprintf(out, cap, "unknown");
}

int hw_string(const char *override, char **ret)
{
	char cpu[HW_FIELD_MAX], gpu[HW_FIELD_MAX], mem[HW_FIELD_MAX], serial[HW_FIELD_MAX];
	char buf[4 * HW_FIELD_MAX + 64];
	char *s;
	int r;

	if (override) {
		s = strdup(override);
		if (!s)
			return -ENOMEM;
		*ret = s;
		return 0;
	}
	hw_cpu(cpu, sizeof(cpu));
	hw_gpu(gpu, sizeof(gpu));
	hw_memory(mem, sizeof(mem));
	hw_serial(serial, sizeof(serial));
	r = f1_hardware_string(cpu[0] ? cpu : "unknown", gpu, mem, serial, buf, sizeof(buf));
	if (r < 0)
		return r;
	s = strdup(buf);
	if (!s)
		return -ENOMEM;
	*ret = s;
	return 0;
}
