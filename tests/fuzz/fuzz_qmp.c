/* libFuzzer target: QMP message decoding (what QEMU sends the supervisor). */
#include <stdint.h>

#include "common.h"
#include "engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qmp_msg m;
	if (qmp_parse_message((const char *)data, size, &m) == 0) {
		if (m.kind == QMP_MSG_EVENT && !m.event)
			__builtin_trap();
		if (m.kind == QMP_MSG_ERROR && (!m.err_class || !m.err_desc))
			__builtin_trap();
		qmp_msg_clear(&m);
	}
	return 0;
}
