"""The Message Batches API's rules and prices: request params, tokens, costs, schemas, per-model rules."""
