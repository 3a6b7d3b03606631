/* The three libsystemd calls Debian's tor makes (sd_notify, sd_notifyf,
 * sd_watchdog_enabled), so the image carries this instead of libsystemd
 * and the libraries it drags in (libgcrypt, libgpg-error, liblz4).
 * sd_notify sends one datagram to $NOTIFY_SOCKET, as systemd's does; the
 * agent's supervisor reads the sender's pid from SO_PASSCRED. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int sd_notify(int unset_environment, const char *state) {
	const char *path = getenv("NOTIFY_SOCKET");
	int r = 0;
	if (!path || !*path || !state)
		goto out;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t n = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || n >= sizeof(sa.sun_path)) {
		r = -EINVAL;
		goto out;
	}
	memcpy(sa.sun_path, path, n);
	if (path[0] == '@')
		sa.sun_path[0] = 0; /* abstract namespace */
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
		r = -errno;
	else
		r = 1;
	close(fd);
out:
	if (unset_environment)
		unsetenv("NOTIFY_SOCKET");
	return r;
}

int sd_notifyf(int unset_environment, const char *format, ...) {
	char *s = NULL;
	va_list ap;
	va_start(ap, format);
	int n = vasprintf(&s, format, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;
	int r = sd_notify(unset_environment, s);
	free(s);
	return r;
}

/* The agent never sets WATCHDOG_USEC: no watchdog. */
int sd_watchdog_enabled(int unset_environment, uint64_t *usec) {
	(void)usec;
	if (unset_environment)
		unsetenv("WATCHDOG_USEC");
	return 0;
}
