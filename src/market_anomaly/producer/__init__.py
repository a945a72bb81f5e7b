"""The producer: exchange candles into the Kafka topic `crypto-candles`, keyed by symbol."""
