/*
 * pause: the first process of every pod sandbox. It only holds the pod's
 * namespaces open, so it sleeps until SIGTERM or SIGINT and then exits 0.
 * As PID 1 of a shared PID namespace it also reaps orphaned children,
 * which would otherwise stay zombies.
 *
 * Built static (gcc -static) so the image needs no libc.
 */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig)
{
    (void)sig;
    _exit(0);
}

static void on_child(int sig)
{
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static void handle(int sig, void (*handler)(int), int flags)
{
    struct sigaction action;

    memset(&action, 0, sizeof(action));
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    sigaction(sig, &action, NULL);
}

int main(void)
{
    /* PID 1 ignores signals it has no handler for, so install them all. */
    handle(SIGTERM, on_stop, 0);
    handle(SIGINT, on_stop, 0);
    handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART);
    for (;;)
        pause();
}
