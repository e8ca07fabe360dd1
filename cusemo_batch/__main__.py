"""``python -m cusemo_batch`` = the ``cusemo-batch`` command."""

from cusemo_batch.cli import main

main(prog_name="cusemo-batch")
