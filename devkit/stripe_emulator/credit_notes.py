"""Credit notes: money credited back on a finalized invoice.

As on Stripe (API 2019-12-03+): a credit note first reduces what is still due
on an open invoice (its pre_payment_amount); the rest (post_payment_amount,
all of it on a paid invoice) must be given back exactly by `refund_amount`
(a refund of the invoice's charge), `credit_amount` (the customer's balance)
and `out_of_band_amount`. Creating one sends credit_note.created and
invoice.updated (the invoice's credit note amounts); voiding one takes all of
that back except a refund (which cannot be undone, so such a credit note
cannot be voided): credit_note.voided and invoice.updated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import new_objects_billing, payments
from .errors import StripeError, invalid, missing
from .forms import check_known, get_int, get_list, get_str, merge_metadata
from .listing import PAGE_PARAMS, list_objects, paginate
from .state import JSON, new_id

if TYPE_CHECKING:
    from .emulator import ApiRequest, Emulator

_CREATE = {
    "invoice",
    "amount",
    "lines",
    "reason",
    "memo",
    "metadata",
    "refund_amount",
    "credit_amount",
    "out_of_band_amount",
    "effective_at",
    "email_type",
}
_REASONS = ("duplicate", "fraudulent", "order_change", "product_unsatisfactory")


def _amount(params: dict[str, Any], name: str) -> int:
    value = get_int(params, name) or 0
    if value < 0:
        raise invalid(
            name, "This value must be greater than or equal to 0.", "parameter_invalid_integer"
        )
    return value


def _line(emu: Emulator, inv: JSON, spec: Any, i: int) -> JSON:
    """One of `lines`: part of an invoice line (by amount or quantity) or a custom line."""
    param = f"lines[{i}]"
    if not isinstance(spec, dict):
        raise invalid(param, "Invalid object", "parameter_invalid_object")
    kind = get_str(spec, "type", required=True)
    quantity = get_int(spec, "quantity")
    if kind == "invoice_line_item":
        line_id = get_str(spec, "invoice_line_item")
        if line_id is None:
            raise missing(f"{param}[invoice_line_item]")
        lines = [ln for ln in inv["lines"]["data"] if ln["id"] == line_id]
        if not lines:
            raise invalid(
                f"{param}[invoice_line_item]",
                f"Invoice line item {line_id} does not belong to invoice {inv['id']}.",
                "resource_missing",
            )
        source = lines[0]
        amount = get_int(spec, "amount")
        if amount is None:
            per_unit = source["amount"] // max(source["quantity"] or 1, 1)
            amount = per_unit * (quantity if quantity is not None else source["quantity"] or 1)
        line = new_objects_billing.credit_note_line(
            new_id("cnli"), inv["livemode"], amount, quantity or 1, source["description"]
        )
        line.update(type="invoice_line_item", invoice_line_item=line_id)
        return line
    if kind == "custom_line_item":
        unit = get_int(spec, "unit_amount")
        if unit is None:
            raise missing(f"{param}[unit_amount]")
        qty = 1 if quantity is None else quantity
        line = new_objects_billing.credit_note_line(
            new_id("cnli"), inv["livemode"], unit * qty, qty, get_str(spec, "description")
        )
        line.update(unit_amount=unit, unit_amount_decimal=str(unit))
        return line
    raise invalid(f"{param}[type]", f"Invalid {param}[type]: {kind}", "parameter_invalid_string")


def _creditable(inv: JSON) -> int:
    issued = inv["pre_payment_credit_notes_amount"] + inv["post_payment_credit_notes_amount"]
    return int(inv["total"]) - int(issued)


def _charge_of(emu: Emulator, inv: JSON) -> JSON | None:
    """The succeeded charge that paid the invoice, if a payment intent did."""
    for payment in inv["payments"]["data"]:
        if payment["status"] != "paid":
            continue  # an attempt that has not paid (yet): its charge carried nothing
        pi = emu.store.get("payment_intents", payment["payment"].get("payment_intent") or "")
        if pi is not None and pi["latest_charge"]:
            return emu.store.get("charges", pi["latest_charge"])
    return None


def create_credit_note(emu: Emulator, req: ApiRequest) -> JSON:
    p = req.params
    check_known(p, _CREATE)
    inv = emu.store.require("invoices", get_str(p, "invoice", required=True) or "", "invoice")
    if inv["status"] not in ("open", "paid"):
        raise invalid(
            "invoice",
            f"Credit notes can only be issued on finalized invoices that are open or paid; "
            f"invoice {inv['id']} is {inv['status']}.",
            "invoice_not_editable",
        )
    reason = get_str(p, "reason")
    if reason is not None and reason not in _REASONS:
        raise invalid("reason", f"Invalid reason: must be one of {', '.join(_REASONS)}")
    lines = [_line(emu, inv, spec, i) for i, spec in enumerate(get_list(p, "lines"))]
    amount = get_int(p, "amount")
    if lines:
        total = sum(line["amount"] for line in lines)
        if amount is not None and amount != total:
            raise invalid(
                "amount",
                f"The amount ({amount}) must equal the sum of the lines ({total}).",
            )
    elif amount is None:
        raise invalid("amount", "You must pass either `amount` or `lines`.")
    else:
        total = amount
    if total <= 0:
        raise invalid("amount", "A credit note's amount must be greater than 0.")
    creditable = _creditable(inv)
    if total > creditable:
        raise invalid(
            "amount",
            f"The credit note amount ({total}) is greater than the invoice's remaining "
            f"creditable amount ({creditable}).",
        )
    pre = min(total, inv["amount_remaining"]) if inv["status"] == "open" else 0
    post = total - pre
    refund, credit, out_of_band = (
        _amount(p, name) for name in ("refund_amount", "credit_amount", "out_of_band_amount")
    )
    if refund + credit + out_of_band != post:
        raise invalid(
            "out_of_band_amount",
            f"The sum of refund_amount ({refund}), credit_amount ({credit}) and "
            f"out_of_band_amount ({out_of_band}) must equal the credit note's post-payment "
            f"amount ({post}).",
        )
    charge = _charge_of(emu, inv) if refund else None
    if refund and (charge is None or charge["amount"] - charge["amount_refunded"] < refund):
        raise invalid(
            "refund_amount",
            f"The invoice {inv['id']} has no payment with {refund} left to refund.",
        )

    now = emu.now()
    cn = new_objects_billing.credit_note(new_id("cn"), now, inv["livemode"])
    seq = len([c for c in emu.store.all("credit_notes") if c["invoice"] == inv["id"]]) + 1
    for line in lines:
        line["livemode"] = inv["livemode"]
    cn["lines"]["data"] = lines
    cn.update(
        amount=total,
        currency=inv["currency"],
        customer=inv["customer"],
        effective_at=get_int(p, "effective_at") or now,
        invoice=inv["id"],
        memo=get_str(p, "memo"),
        metadata=merge_metadata({}, p),
        number=f"{inv['number']}-CN-{seq:02d}",
        out_of_band_amount=out_of_band or None,
        post_payment_amount=post,
        pre_payment_amount=pre,
        reason=reason,
        subtotal=total,
        subtotal_excluding_tax=total,
        total=total,
        total_excluding_tax=total,
        type="pre_payment" if post == 0 else "post_payment",
    )
    if charge is not None:
        re = payments.refund_charge(emu, req, charge, refund, None)
        cn["refunds"] = [{"amount_refunded": refund, "refund": re["id"], "type": "refund"}]
    if credit:
        cn["customer_balance_transaction"] = new_id("cbtxn")
        _adjust_balance(emu, req, inv["customer"], -credit)
    emu.store.put("credit_notes", cn)
    emu.record_event(req, "credit_note.created", cn)
    _adjust_invoice(emu, req, inv, pre, post)
    return cn


def _adjust_balance(emu: Emulator, req: ApiRequest, customer_id: str, delta: int) -> None:
    """A credit to the customer's balance (negative: the customer is owed)."""
    cus = emu.store.get("customers", customer_id)
    if cus is not None:
        with emu.updating(req, cus, "customer.updated"):
            cus["balance"] += delta


def _adjust_invoice(emu: Emulator, req: ApiRequest, inv: JSON, pre: int, post: int) -> None:
    """The invoice's credit note amounts (negative: a void takes them back):
    invoice.updated; an open invoice credited in full is paid (invoice.paid)."""
    with emu.updating(req, inv, "invoice.updated"):
        inv["pre_payment_credit_notes_amount"] += pre
        inv["post_payment_credit_notes_amount"] += post
        if pre:
            inv["amount_due"] -= pre
            inv["amount_remaining"] -= pre
    if inv["status"] == "open" and inv["amount_remaining"] == 0:
        inv.update(status="paid", auto_advance=False)
        inv["status_transitions"]["paid_at"] = emu.now()
        emu.record_event(req, "invoice.paid", inv)


def void_credit_note(emu: Emulator, req: ApiRequest) -> JSON:
    cn = emu.store.require("credit_notes", req.path_params["id"])
    check_known(req.params, set())
    if cn["status"] == "void":
        raise StripeError(400, f"The credit note {cn['id']} is already void.")
    if cn["refunds"]:
        raise StripeError(
            400, f"The credit note {cn['id']} refunded a payment; it cannot be voided."
        )
    inv = emu.store.require("invoices", cn["invoice"], "invoice")
    if inv["status"] == "paid" and cn["pre_payment_amount"]:
        raise StripeError(
            400,
            f"The credit note {cn['id']} reduced what was due on invoice {inv['id']}, "
            "which has been paid since; it cannot be voided.",
        )
    cn.update(status="void", voided_at=emu.now())
    emu.record_event(req, "credit_note.voided", cn)
    if cn["customer_balance_transaction"]:
        credited = cn["post_payment_amount"] - (cn["out_of_band_amount"] or 0)
        _adjust_balance(emu, req, cn["customer"], credited)
    _adjust_invoice(emu, req, inv, -cn["pre_payment_amount"], -cn["post_payment_amount"])
    return cn


def retrieve_credit_note(emu: Emulator, req: ApiRequest) -> JSON:
    return emu.store.require("credit_notes", req.path_params["id"])


def list_credit_notes(emu: Emulator, req: ApiRequest) -> JSON:
    return list_objects(emu.store, req.params, "credit_notes", equal=("invoice", "customer"))


def list_credit_note_lines(emu: Emulator, req: ApiRequest) -> JSON:
    cn = emu.store.require("credit_notes", req.path_params["id"])
    check_known(req.params, PAGE_PARAMS)
    url = f"/v1/credit_notes/{cn['id']}/lines"
    return paginate(list(cn["lines"]["data"]), req.params, url, "credit_note_line_item")


ROUTES = [
    ("POST", "/v1/credit_notes", create_credit_note),
    ("GET", "/v1/credit_notes", list_credit_notes),
    ("GET", "/v1/credit_notes/{id}", retrieve_credit_note),
    ("GET", "/v1/credit_notes/{id}/lines", list_credit_note_lines),
    ("POST", "/v1/credit_notes/{id}/void", void_credit_note),
]
