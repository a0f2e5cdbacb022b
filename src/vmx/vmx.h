/*
 * vmx.h - the .vmx configuration file: a byte-exact key/value store
 * (vmx_file) and the typed, validated model of the VM built from it
 * (vmx_model).  See vela.vmx(5) for every key.
 *
 * Round trip: vmx_file keeps every line as it was read.  Only lines whose
 * value is changed with vmx_set() are rewritten; new keys are appended.
 * Comments, blank lines, unknown keys, key spelling and line endings survive.
 */
#ifndef VELA_VMX_H
#define VELA_VMX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct strbuf;

/* ------------------------------------------------------------ the file */

struct vmx_file;

/* Largest .vmx accepted; real ones are a few KiB. */
#define VMX_MAX_FILE_SIZE (4u << 20)

/* Parse text (len bytes, need not be NUL-terminated).  name is used in
 * messages ("vm.vmx:12: ...").  Syntax errors: -VELA_E_SYNTAX. */
int vmx_file_parse(const char *name, const char *text, size_t len, struct vmx_file **out);
int vmx_file_load(const char *path, struct vmx_file **out);
void vmx_file_free(struct vmx_file *f);

/* Name given at parse/load time (owned by f). */
const char *vmx_file_name(const struct vmx_file *f);

/* Value of a key (case-insensitive), decoded; NULL if absent.  Owned by f. */
const char *vmx_get(const struct vmx_file *f, const char *key);
/* 1-based line number of a key, 0 if absent. */
unsigned vmx_get_line(const struct vmx_file *f, const char *key);
/* Set (rewrite that line only) or append a key. */
int vmx_set(struct vmx_file *f, const char *key, const char *value);
/* Remove a key's line; no-op if absent. */
void vmx_unset(struct vmx_file *f, const char *key);
/* True once vmx_set/vmx_unset changed anything. */
bool vmx_file_dirty(const struct vmx_file *f);

/* Iterate entries in file order: returns false past the end. */
bool vmx_entry_at(const struct vmx_file *f, size_t i, const char **key, const char **value, unsigned *line);

/* The file's bytes (caller frees).  Unchanged files come back identical. */
char *vmx_file_serialize(const struct vmx_file *f, size_t *len);
/* Write atomically to path. */
int vmx_file_save(const struct vmx_file *f, const char *path);

/*
 * Edit a .vmx on disk: set keys[i] to values[i] (NULL = remove the key), in
 * order, then check that the result still makes a valid VM (files need not
 * exist) and write it atomically.  An edit that would break the file is
 * refused (VELA_E_CONFIG) and leaves it as it was.  Other lines, comments
 * and order are kept.
 */
int vmx_file_edit(const char *path, const char *const *keys, const char *const *values, size_t n);

/* ------------------------------------------------------------ the model */

enum vmx_bus { VMX_BUS_IDE, VMX_BUS_SCSI, VMX_BUS_SATA, VMX_BUS_VIRTIO };
enum vmx_scsi_dev { VMX_SCSI_LSILOGIC, VMX_SCSI_LSISAS1068, VMX_SCSI_BUSLOGIC, VMX_SCSI_PVSCSI, VMX_SCSI_VIRTIO };
enum vmx_dev_type { VMX_DEV_DISK, VMX_DEV_CDROM_IMAGE, VMX_DEV_CDROM_RAW };
enum vmx_disk_mode {
	VMX_MODE_PERSISTENT,
	VMX_MODE_NONPERSISTENT,
	VMX_MODE_UNDOABLE,
	VMX_MODE_APPEND,
	VMX_MODE_INDEPENDENT_PERSISTENT,
	VMX_MODE_INDEPENDENT_NONPERSISTENT,
};
enum vmx_nic_dev { VMX_NIC_VIRTIO, VMX_NIC_E1000, VMX_NIC_E1000E, VMX_NIC_VMXNET3, VMX_NIC_PCNET };
enum vmx_mac_type { VMX_MAC_GENERATED, VMX_MAC_STATIC };
enum vmx_serial_type { VMX_SERIAL_NONE, VMX_SERIAL_FILE, VMX_SERIAL_PIPE, VMX_SERIAL_CONSOLE, VMX_SERIAL_DEVICE };
enum vmx_accel { VMX_ACCEL_AUTO, VMX_ACCEL_KVM, VMX_ACCEL_TCG };
enum vmx_chipset { VMX_CHIPSET_Q35, VMX_CHIPSET_I440FX };
enum vmx_uuid_action { VMX_UUID_ASK, VMX_UUID_KEEP, VMX_UUID_CREATE };

#define VMX_MAX_SCSI_CTRL 4
#define VMX_MAX_SCSI_UNIT 16    /* unit 7 is the controller's own id */
#define VMX_MAX_IDE_CTRL 2
#define VMX_MAX_IDE_UNIT 2
#define VMX_MAX_SATA_CTRL 4
#define VMX_MAX_SATA_UNIT 6     /* ports of an AHCI controller */
#define VMX_MAX_VIRTIO_GROUP 4
#define VMX_MAX_VIRTIO_UNIT 16
#define VMX_MAX_NICS 10
#define VMX_MAX_SERIAL 4
#define VMX_MIN_MEMSIZE_MB 4
#define VMX_MAX_MEMSIZE_MB (1024u * 1024u)  /* 1 TiB */
#define VMX_MAX_VCPUS 255

struct vmx_disk {
	enum vmx_bus bus;
	unsigned ctrl, unit;
	char addr[16];          /* "scsi0:1" as in the keys */
	enum vmx_dev_type type;
	enum vmx_disk_mode mode;
	char *file_name;        /* as written; NULL for an empty CD-ROM */
	char *path;             /* resolved absolute path; NULL for an empty CD-ROM */
	bool start_connected;
	unsigned line;          /* line of the .fileName (or .present) key */
};

struct vmx_scsi_ctrl {
	bool present;
	enum vmx_scsi_dev dev;
};

struct vmx_sata_ctrl {
	bool present;
};

struct vmx_nic {
	bool present;
	unsigned index;
	enum vmx_nic_dev dev;
	enum vmx_mac_type mac_type;
	char mac[18];           /* "02:56:4c:12:34:56"; "" = not generated yet */
	char *connection_type;  /* "bridged", "hostonly", "nat", "custom", ... */
	char *network_name;
	bool start_connected;
};

struct vmx_serial {
	bool present;
	unsigned index;
	enum vmx_serial_type type;
	char *path;             /* file/pipe/device path, resolved; NULL otherwise */
	bool pipe_server;       /* pipe.endPoint = "server" (default) or "client" */
	bool start_connected;
};

struct vmx_floppy {
	bool present;
	char *path;             /* image, resolved; NULL if empty */
	bool start_connected;
};

struct vmx_boot {
	char *kernel, *initrd, *cmdline; /* direct kernel boot, paths resolved */
	char order[4];          /* boot device letters in order: 'd'isk 'c'drom 'f'loppy 'n'et */
	bool menu;
};

struct vmx_model {
	char *config_path;      /* as given */
	char *config_dir;       /* folder of the .vmx: base for relative paths */
	char *display_name, *guest_os, *annotation;
	unsigned virtual_hw_version;
	uint64_t memsize_mb;
	unsigned vcpus;
	uint8_t uuid_bios[16];
	bool has_uuid_bios;
	uint8_t uuid_location[16];
	bool has_uuid_location;
	enum vmx_uuid_action uuid_action;
	enum vmx_accel accel;
	enum vmx_chipset chipset;
	char *machine_id;
	bool machine_id_get_disable;
	/* Guest tools, suspend and resume. */
	unsigned heartbeat_timeout_s;   /* tools.heartbeatTimeout, default 60 */
	bool sync_time;                 /* tools.syncTime */
	bool sync_time_resume;          /* time.synchronize.resume.disk, default TRUE */
	bool sync_time_restore;         /* time.synchronize.restore (revert), default TRUE */
	bool resume_repeatable;         /* resume.repeatable */
	bool ctk_enabled;               /* ctkEnabled: changed-block tracking of persistent disks */
	char *suspend_dir;              /* suspend.directory, resolved; NULL = the VM's folder */
	char *checkpoint;               /* checkpoint.vmState, resolved: the saved state to resume; NULL = none */
	struct vmx_boot boot;

	struct vmx_scsi_ctrl scsi[VMX_MAX_SCSI_CTRL];
	struct vmx_sata_ctrl sata[VMX_MAX_SATA_CTRL];
	struct vmx_disk *disks;
	size_t n_disks;
	struct vmx_nic nics[VMX_MAX_NICS];
	struct vmx_serial serials[VMX_MAX_SERIAL];
	struct vmx_floppy floppy;
};

struct vmx_model_opts {
	/* Check that disk, CD-ROM and kernel files exist (power-on, `vmx check`);
	 * off for pure syntax checks of files from elsewhere. */
	bool check_files;
};

/*
 * Build and validate the model.  On invalid configuration returns
 * -VELA_E_CONFIG; the message is the first problem
 * ("vm.vmx:12: scsi0:0.fileName: disk \"a.vmdk\" does not exist") and, when diag
 * is given, every problem is appended to it, one per line.
 */
int vmx_model_build(const struct vmx_file *f, const char *config_path,
		    const struct vmx_model_opts *opts, struct strbuf *diag,
		    struct vmx_model **out);
void vmx_model_free(struct vmx_model *m);

/* --------------------------------------------------- identity, names */

/* "56 4d 1a ... 6f-70 81 ... e7" (the classic form) or canonical 8-4-4-4-12. */
int vmx_uuid_parse(const char *s, uint8_t out[16]);
/* Classic form, 48 bytes buffer. */
void vmx_uuid_format_classic(const uint8_t u[16], char *buf, size_t size);
/* Canonical form, 37 bytes buffer. */
void vmx_uuid_format_canonical(const uint8_t u[16], char *buf, size_t size);
/* Location id of a config path (its absolute, resolved path). */
int vmx_location_uuid(const char *config_path, uint8_t out[16]);

/* Generated MAC for NIC index of a VM with this BIOS UUID ("02:56:4c:xx:xx:xx",
 * lower half of Vela's range).  Buffer at least 18 bytes. */
void vmx_mac_generate(const uint8_t uuid_bios[16], unsigned index, char *buf);
/* 0 if mac is well-formed and allowed as a static address (Vela's static
 * range 02:56:4c:80:00:00-02:56:4c:ff:ff:ff or the classic
 * 00:50:56:00:00:00-00:50:56:3f:ff:ff); -VELA_E_INVAL/-VELA_E_RANGE otherwise. */
int vmx_mac_check_static(const char *mac);

/*
 * First power-on identity work on the file (not on the model):
 *  - missing uuid.bios: generate; missing uuid.location: record;
 *  - generated NIC addresses: fill in ethernetN.generatedAddress.
 * If uuid.location does not match config_path, the VM was moved or copied:
 * with action KEEP the location is updated, with CREATE a new uuid.bios and new
 * generated MACs are written; with ASK -VELA_E_NEEDINPUT is returned and
 * nothing is changed.  *changed tells whether f needs saving.
 */
int vmx_identity_update(struct vmx_file *f, const char *config_path,
			enum vmx_uuid_action action, bool *changed);

/* Names for messages and JSON. */
const char *vmx_bus_name(enum vmx_bus b);
const char *vmx_disk_mode_name(enum vmx_disk_mode m);
const char *vmx_scsi_dev_name(enum vmx_scsi_dev d);
const char *vmx_nic_dev_name(enum vmx_nic_dev d);
const char *vmx_accel_name(enum vmx_accel a);

#endif /* VELA_VMX_H */
