"""`CcxtExecutor`: a strategy's signals as real orders on a ccxt exchange, exactly once.

    bk.add_ccxt_exchange("binance", "binance", sandbox=True)        # keys: BINANCE_API_KEY / BINANCE_SECRET
    bk.add_order_executor(strategy_name="x", executor=bk.CcxtExecutor("binance"), trade=True)

It is `JournaledExecutor` (the journal's exactly-once rules, `journaled.py`) over `CcxtGateway`
(`ccxt_gateway.py`, which wraps the ccxt order gateway of `adapters/ccxt_orders.py`). Switching from
paper is replacing `bk.PaperExecutor()` by `bk.CcxtExecutor(...)` and passing `trade=True`.

Decisions, and why:

- **One switch.** Real orders need `add_order_executor(..., trade=True)` (the CLI's `--trade`); the
  executor has no `trade` flag of its own, so there is exactly one place to look. Without it the
  engine refuses to attach the executor, and the ccxt gateway is built with `trade=False` anyway.
- **Keys are checked at start**: an exchange without an API key and secret is refused with a clear
  error before any order exists (market data needs no keys, orders do).
- **`sandbox`** states the venue you mean: True refuses an exchange not in ccxt's sandbox mode, False
  refuses one that is; None (the default) takes the exchange as registered (`add_ccxt_exchange(...,
  sandbox=True)` is what switches ccxt to the testnet).
- **Size**: the signal's `quantity` (a sizing, `add_sizing`), else `amount` (base units), else
  `cost` (quote currency: `cost / entry price`). Without any of them an order is refused, never guessed.
- **Orders**: a scheduled (limit) signal gets a limit entry at `price_open`, cancelled when the signal
  is cancelled or expires; an immediate signal a market entry; the close is a market exit of exactly
  what the entry filled (engine-managed exits; exchange-side take-profit / stop-loss orders are a
  later option: they would have to be cancelled and reconciled against the engine's own close).
- **Live only**: a real executor never receives backtest events (the router filters them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..adapters.ccxt_exchange import CcxtExchange
from ..engine.errors import ConfigError, SchemaError
from ..engine.exchange import ExchangeClient
from ..engine.models import OrderRequest, OrderRole, OrderType, SignalLifecycleEvent
from .ccxt_gateway import CcxtGateway
from .journaled import JournaledExecutor
from .protocol import ExecutorContext

__all__ = ["CcxtExecutor"]


class CcxtExecutor(JournaledExecutor):
    """Real orders through ccxt for one strategy (see the module docstring).

    `exchange`: a name registered with `add_ccxt_exchange`, a `CcxtExchange`, or None for the strategy's
    own exchange. `attempts`, `retry_delay`, `resend_after`, `check_balance` and `sleep` are the ccxt
    order gateway's (bounded retries, spacing, the `recvWindow` a re-send waits out, the pre-send
    balance check).
    """

    def __init__(
        self,
        exchange: str | CcxtExchange | None = None,
        *,
        sandbox: bool | None = None,
        amount: float | None = None,
        cost: float | None = None,
        attempts: int = 5,
        retry_delay: float = 1.0,
        resend_after: float = 5.0,
        check_balance: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if exchange is not None and not isinstance(exchange, str | CcxtExchange):
            raise SchemaError(f"CcxtExecutor: exchange must be an exchange name, a CcxtExchange or None, "
                              f"got {type(exchange).__name__}")
        if sandbox is not None and not isinstance(sandbox, bool):
            raise SchemaError(f"CcxtExecutor: sandbox must be True, False or None, got {sandbox!r}")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float) or not cost > 0):
            raise SchemaError(f"CcxtExecutor: cost must be a positive number or None, got {cost!r}")
        self._venue: CcxtGateway | None = None
        super().__init__(_Unstarted(), amount=amount)
        self.exchange = exchange
        self.sandbox = sandbox
        self.cost = None if cost is None else float(cost)
        self._options: dict[str, Any] = {"attempts": attempts, "retry_delay": retry_delay,
                                         "resend_after": resend_after, "check_balance": check_balance}
        self._sleep = sleep

    @property
    def places_real_orders(self) -> bool:
        return True

    @property
    def needs_attention(self) -> dict[str, str]:
        """Signal id -> why, for every order this process parked (its fate unknown after the retries)."""
        venue = self._venue
        if venue is None:
            return {}
        return {e.signal_id: e.reason or "" for e in venue.parked.values()}

    def __repr__(self) -> str:
        name = self.exchange if not isinstance(self.exchange, CcxtExchange) else self.exchange.exchange_name
        return f"CcxtExecutor({name!r}, sandbox={self.sandbox}, amount={self.amount}, cost={self.cost})"

    async def start(self, context: ExecutorContext) -> None:
        await super().start(context)  # refuses without trade=True
        venue = CcxtGateway(lambda name: self._resolve(context, name), trade=context.trade, now_ms=context.now_ms,
                            report_error=context.report_error, sleep=self._sleep, **self._options)
        if self.exchange is not None:  # checked now: keys and venue before any signal
            self._resolve(context, self.exchange if isinstance(self.exchange, str) else "")
        self._venue = venue
        self.gateway = venue

    def _resolve(self, context: ExecutorContext, exchange_name: str) -> CcxtExchange:
        if isinstance(self.exchange, CcxtExchange):
            return self.check(self.exchange)
        return self.check(context.exchange(self.exchange if isinstance(self.exchange, str) else exchange_name))

    def check(self, exchange: CcxtExchange | ExchangeClient) -> CcxtExchange:
        """The ccxt exchange behind `exchange` (a registered exchange's client, or the adapter itself), once
        it is fit for real orders: a ccxt exchange, with keys, on the venue `sandbox` asks for. Raises
        ConfigError otherwise; the CLI calls it before a run so `--trade` fails at once, not at a signal."""
        found: object = exchange
        if isinstance(exchange, ExchangeClient):
            found = getattr(exchange.schema.get_candles, "__self__", None)
            if not isinstance(found, CcxtExchange):
                raise ConfigError(f"CcxtExecutor: exchange {exchange.name!r} is not a ccxt exchange; register it "
                                  "with bk.add_ccxt_exchange(...) (or pass a CcxtExchange)")
        assert isinstance(found, CcxtExchange)
        if not found.has_credentials:
            prefix = found.exchange_id.upper()
            raise ConfigError(f"CcxtExecutor: exchange {found.exchange_name!r} has no API key and secret: real "
                              f"orders need them (api_key=/secret= of add_ccxt_exchange, or {prefix}_API_KEY "
                              f"and {prefix}_SECRET in the environment)")
        if self.sandbox is not None and found.sandbox != self.sandbox:
            raise ConfigError(f"CcxtExecutor: sandbox={self.sandbox} but exchange {found.exchange_name!r} is "
                              f"{'in' if found.sandbox else 'not in'} sandbox mode; register it with "
                              f"add_ccxt_exchange(..., sandbox={self.sandbox})")
        return found

    def _request(
        self, event: SignalLifecycleEvent, role: OrderRole, type: OrderType, price: float | None,
        *, amount: float | None = None,
    ) -> OrderRequest:
        if amount is None and event.signal.quantity is None and self.amount is None and self.cost is not None:
            reference = price if price is not None else (event.signal.price_open or event.price)
            amount = self.cost / reference
        return super()._request(event, role, type, price, amount=amount)


class _Unstarted:
    """The gateway before `start`: any call is a bug (the engine starts an executor before using it)."""

    places_real_orders = True

    async def place(self, request: OrderRequest) -> Any:
        raise ConfigError("CcxtExecutor: not started (attach it with add_order_executor)")

    fetch = cancel = place
