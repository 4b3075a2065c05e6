"""The papermill engine ``nesylib run`` executes notebooks with: papermill's own (nbclient), with a
kernel manager that keeps a successful run's log free of two kernel messages at their source.

- "[IPKernelApp] WARNING | Kernel is running over TCP without encryption ...": ipykernel logs it at
  start-up when the manager gave it no CurveZMQ keys. jupyter_client provisions them only when its
  ``transport_encryption`` is "auto" or "required" (default "disabled"); the runner's manager uses
  "auto" (keys for every kernelspec that declares ``supported_encryption: ["curve"]``, as ipykernel's
  does) when pyzmq has CURVE.
- "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.": jupyter_client interrupts a kernel
  (SIGINT) before asking it to shut down; when that signal lands while the kernel is still finishing
  a request (papermill's last kernel_info), ipykernel logs it. Once every cell has replied the
  kernel is idle, so the runner's manager then skips that interrupt; a run stopped mid-cell (Ctrl-C,
  a timeout, a dead kernel) is interrupted as before.

Every other line the kernel writes to stderr, and every notebook error, is reported as before.
Imported only where notebooks run (it imports papermill and jupyter_client).
"""
from __future__ import annotations

import zmq
from jupyter_client.manager import AsyncKernelManager
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.log import logger
from papermill.utils import merge_kwargs, remove_args
from traitlets import Bool, default

ENGINE = "nesylib"


class QuietKernelManager(AsyncKernelManager):
    """An nbclient kernel manager with encrypted transport and no interrupt before an idle shutdown."""

    interrupt_on_shutdown = Bool(True, help="Send SIGINT before the shutdown request (the kernel may be busy)")

    @default("transport_encryption")
    def _encrypt_when_possible(self) -> str:
        return "auto" if zmq.has("curve") else "disabled"

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down and not self.interrupt_on_shutdown:
            return  # idle: the shutdown request alone stops it
        await super()._async_interrupt_kernel()

    interrupt_kernel = _async_interrupt_kernel


class RunnerNotebookClient(PapermillNotebookClient):
    """papermill's client, on a ``QuietKernelManager`` that it marks idle once every cell has replied."""

    @default("kernel_manager_class")
    def _quiet_manager(self):
        return QuietKernelManager

    def papermill_execute_cells(self):
        super().papermill_execute_cells()  # returns after the last cell, or after the first failed one
        if isinstance(self.km, QuietKernelManager):
            self.km.interrupt_on_shutdown = False


class RunnerEngine(NBClientEngine):
    """papermill's ``NBClientEngine`` (papermill 2.7) with ``RunnerNotebookClient``."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                 start_timeout=60, execution_timeout=None, **kwargs):
        kwargs = remove_args(["input_path"], **kwargs)
        safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
        final_kwargs = merge_kwargs(safe_kwargs, timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
                                    startup_timeout=start_timeout, kernel_name=kernel_name, log=logger,
                                    log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file)
        return RunnerNotebookClient(nb_man, **final_kwargs).execute()


papermill_engines.register(ENGINE, RunnerEngine)
