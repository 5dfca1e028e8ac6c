"""The submit stage: inputs, validation, records, chunking, estimate, ledger, one round's submission."""
