from lib_llmcond.cli import main

raise SystemExit(main())
