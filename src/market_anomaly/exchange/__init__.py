"""The exchange side: Binance's kline wire format, a simulated market, a Binance-compatible server and the client."""
