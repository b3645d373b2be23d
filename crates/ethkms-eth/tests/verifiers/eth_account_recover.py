"""Recovers signers with Python eth-account, an implementation nobody in this project wrote.

Reads a JSON list of cases on standard input, each {"name", "kind": "tx"|"message"|"typed", ...}:
  tx:      {"raw": "0x…"}                 a signed raw transaction
  message: {"message": "…", "signature"}  an EIP-191 personal message
  typed:   {"json": "…", "signature"}     eth_signTypedData_v4 JSON
Prints a JSON list of {"name", "address"} or {"name", "error"}: one per case, in order.
"""
import json
import sys

from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data


def recover(case):
    kind = case["kind"]
    if kind == "tx":
        return Account.recover_transaction(case["raw"])
    if kind == "message":
        return Account.recover_message(encode_defunct(text=case["message"]), signature=case["signature"])
    if kind == "typed":
        message = encode_typed_data(full_message=json.loads(case["json"]))
        return Account.recover_message(message, signature=case["signature"])
    raise ValueError(f"unknown kind {kind}")


results = []
for case in json.load(sys.stdin):
    try:
        results.append({"name": case["name"], "address": recover(case)})
    except Exception as error:  # reported per case, so one unsupported type does not hide the rest
        results.append({"name": case["name"], "error": f"{type(error).__name__}: {error}"})
print(json.dumps(results))
