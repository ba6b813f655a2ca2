"""The data side of the account emulator: accounts, their API keys and their force orders,
as `AccountEmulator` (`account_rest`) scripts and serves them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.emulator.account_auth import (
    AccountKind,
    ApiKey,
    KeyType,
    Permission,
    default_permissions,
    make_api_key,
)
from collector.emulator.account_options import AccountOptions
from collector.emulator.account_orders import (
    ForceOrder,
    Product,
    build_order,
    generate_fields,
    update_fields,
)


@dataclass(slots=True)
class Account:
    """One emulated account and its force orders per product."""

    name: str
    kind: AccountKind
    account_id: int
    orders: dict[Product, list[ForceOrder]] = field(default_factory=dict)


class AccountStore:
    """Accounts and keys (`add_account`, `add_api_key`) and their orders (`add_force_order`,
    `update_order`, `seed_history`, `orders`); a base of `AccountEmulator`."""

    _options: AccountOptions

    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}
        self._keys: dict[str, ApiKey] = {}
        self._next_order_id = 6_071_832_819
        self._sequence = 0

    # -- accounts -------------------------------------------------------------------------------

    def add_account(
        self,
        name: str,
        kind: AccountKind | str,
        api_key: str,
        secret_or_public_pem: str,
        key_type: KeyType | str = KeyType.HMAC,
        *,
        permissions: Sequence[Permission | str] | None = None,
        account_id: int | None = None,
    ) -> Account:
        """Create account `name` of `kind` (classic | portfolio_margin) with one API key.

        `secret_or_public_pem` is the HMAC secret, or the PEM public key for RSA / ED25519.
        `permissions` default to `default_permissions(kind)`; `account_id` (the margin order's
        `accountId`) to one more than the highest so far. Raises ValueError for a duplicate
        name or key, or a malformed key, secret or PEM.
        """
        if name in self._accounts:
            raise ValueError(f"account {name!r} exists")
        kind = AccountKind(kind)
        if account_id is None:
            account_id = (
                max((a.account_id for a in self._accounts.values()), default=152_950_865) + 1
            )
        account = Account(name, kind, account_id)
        self._accounts[name] = account
        try:
            self.add_api_key(name, api_key, secret_or_public_pem, key_type, permissions=permissions)
        except ValueError:
            del self._accounts[name]
            raise
        return account

    def add_api_key(
        self,
        account: str,
        api_key: str,
        secret_or_public_pem: str,
        key_type: KeyType | str = KeyType.HMAC,
        *,
        permissions: Sequence[Permission | str] | None = None,
    ) -> ApiKey:
        """Register another API key for `account` (same rules as `add_account`)."""
        owner = self._account(account)
        if api_key in self._keys:
            raise ValueError(f"API key {api_key!r} is already registered")
        chosen = default_permissions(owner.kind) if permissions is None else permissions
        key = make_api_key(api_key, account, key_type, secret_or_public_pem, chosen)
        self._keys[api_key] = key
        return key

    def _account(self, name: str) -> Account:
        try:
            return self._accounts[name]
        except KeyError:
            raise KeyError(f"no account {name!r}") from None

    # -- data -----------------------------------------------------------------------------------

    def add_force_order(
        self,
        account: str,
        product: Product | str,
        *,
        visible_from_ms: int | None = None,
        is_queryable: bool = True,
        extra_fields: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> ForceOrder:
        """Store one force order of `account` and return it; see `account_orders.build_order`.

        `fields` are wire names of any shape (orderId, symbol, side, price, avgPrice, origQty or
        qty, time, updateTime or updatedTime, autoCloseType, clientOrderId, isIsolated, …);
        prices and quantities as str, Decimal or int. `visible_from_ms`: a late row, hidden until
        that server time. `is_queryable=False`: the margin order lookup answers -2013.
        `extra_fields` are appended verbatim to every shape. The same orderId may be used on
        two symbols, but not twice on one. MARGIN_PM needs a Portfolio Margin account,
        MARGIN_CLASSIC a classic one.
        """
        owner = self._account(account)
        kind = Product(product)
        if kind is Product.MARGIN_PM and owner.kind is not AccountKind.PORTFOLIO_MARGIN:
            raise ValueError("margin_pm orders belong to Portfolio Margin accounts")
        if kind is Product.MARGIN_CLASSIC and owner.kind is not AccountKind.CLASSIC:
            raise ValueError("margin_classic orders belong to classic accounts")
        self._sequence += 1
        order = build_order(
            kind,
            fields,
            order_id=self._next_order_id,
            now_ms=self._options.clock(),
            sequence=self._sequence,
            account_id=owner.account_id,
        )
        store = owner.orders.setdefault(kind, [])
        if any(o.order_id == order.order_id and o.symbol == order.symbol for o in store):
            raise ValueError(f"{kind} order {order.symbol} {order.order_id} exists")
        self._next_order_id = max(self._next_order_id, order.order_id) + 1
        order.visible_from_ms = visible_from_ms
        order.is_queryable = is_queryable
        order.extra = dict(extra_fields or {})
        store.append(order)
        return order

    def update_order(
        self,
        account: str,
        product: Product | str,
        order_id: int,
        *,
        symbol: str | None = None,
        visible_from_ms: int | None = None,
        is_queryable: bool | None = None,
        **fields: Any,
    ) -> ForceOrder:
        """Change a stored order (e.g. bump `updateTime`, set `status`); return it.

        `symbol` is needed when `order_id` is used on several symbols. Raises KeyError when no
        order matches, ValueError when several do.
        """
        store = self._account(account).orders.get(Product(product), [])
        matches = [o for o in store if o.order_id == order_id and symbol in (None, o.symbol)]
        if not matches:
            raise KeyError(f"no {product} order {order_id} of {account!r}")
        if len(matches) > 1:
            raise ValueError(f"order id {order_id} is used on several symbols; pass symbol")
        order = matches[0]
        update_fields(order, fields)
        if visible_from_ms is not None:
            order.visible_from_ms = visible_from_ms
        if is_queryable is not None:
            order.is_queryable = is_queryable
        return order

    def seed_history(
        self,
        account: str,
        product: Product | str,
        n: int,
        start_ms: int,
        end_ms: int,
        seed: int,
        *,
        symbols: Sequence[str] | None = None,
        adl_share: float = 0.1,
        isolated_share: float = 0.0,
    ) -> list[ForceOrder]:
        """Add `n` deterministic orders with `time` in [start_ms, end_ms]; return them, oldest
        first. Same seed and arguments on a fresh emulator, same orders (ids included)."""
        kind = Product(product)
        rows = generate_fields(
            kind,
            n,
            start_ms,
            end_ms,
            seed,
            symbols=symbols,
            adl_share=adl_share,
            isolated_share=isolated_share,
        )
        return [self.add_force_order(account, kind, **fields) for fields in rows]

    def orders(self, account: str, product: Product | str) -> list[ForceOrder]:
        """The stored orders of `account` for `product` (live objects), in insertion order."""
        return list(self._account(account).orders.get(Product(product), []))
