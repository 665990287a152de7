# gdb -q -batch -x scripts/functions-run.py --args BINARY ARGS...
#
# Writes to $FUNCTIONS_OUT the name of every function of BINARY that ran:
# a one-shot breakpoint on each function's entry (scripts/startup-layout.sh).
# A debugger, unlike valgrind, lets the program make every system call,
# so seccomp and Landlock are set up as in production.
import os
import subprocess

import gdb

exe = os.path.realpath(gdb.current_progspace().filename)
symbols = {}
nm = subprocess.run(["nm", "--defined-only", exe], capture_output=True, text=True, check=True)
for line in nm.stdout.splitlines():
    fields = line.split()
    if len(fields) == 3 and fields[1] in "tTwW":
        symbols.setdefault(int(fields[0], 16), fields[2])

for setting in ["pagination off", "confirm off", "breakpoint always-inserted on",
                "print thread-events off", "print inferior-events off"]:
    gdb.execute("set " + setting)
gdb.execute("handle SIGUSR1 SIGUSR2 SIGPIPE SIGCHLD SIGALRM nostop noprint pass")
gdb.execute("starti", to_string=True)
pid = gdb.selected_inferior().pid
base = next(int(line.split("-")[0], 16) for line in open(f"/proc/{pid}/maps")
            if line.split()[-1] == exe)

names = {}
for offset, name in symbols.items():
    bp = gdb.Breakpoint(f"*{base + offset:#x}", internal=True, temporary=True)
    bp.silent = True
    names[bp.number] = name
ran = set()


def stopped(event):
    if isinstance(event, gdb.BreakpointEvent):
        ran.update(names[b.number] for b in event.breakpoints if b.number in names)


gdb.events.stop.connect(stopped)
while gdb.selected_inferior().pid:
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error:
        break
with open(os.environ["FUNCTIONS_OUT"], "w") as out:
    out.write("".join(name + "\n" for name in sorted(ran)))
