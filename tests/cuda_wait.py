"""A bounded host wait on GPU work whose failure mode is a deadlock (a stream waiting on a flag that
is never written): ``torch.cuda.synchronize()`` would hang the whole run instead of failing."""
import os
import sys
import time


def wait_done(event, seconds=60.0, what="the GPU work"):
    """Poll ``event`` (recorded after the work) until it completes. Past ``seconds`` the process ends
    (``os._exit``) after saying why: its stuck stream would hang any later synchronisation, the next
    test's, pytest's teardown and the interpreter's exit included, so failing the test is not enough."""
    t0 = time.time()
    while not event.query():
        if time.time() - t0 > seconds:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?")
            sys.stdout.flush()
            sys.stderr.write(f"\nFAILED {test}: {what} did not finish within {seconds} s (deadlock?); "
                             "ending the process, whose GPU is stuck\n")
            sys.stderr.flush()
            os._exit(1)
        time.sleep(0.01)
