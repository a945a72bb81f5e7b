from market_anomaly.cli import main

raise SystemExit(main())
