"""The five MinMo services, one small package each: a servicer and an entry point."""
