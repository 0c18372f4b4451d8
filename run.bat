@echo off
rem Thin launcher: make the virtual environment, install the project, run.
rem   run.bat         set up, then open the wizard with the example loaded
rem                   (examples\quickstart.toml); with arguments (e.g. --set ...), train
rem                   the example headless with lora-train
rem   run.bat test    set up, then run the test suite
rem (batch files cannot tell whether they run in a terminal: scripted use passes an argument)
setlocal
cd /d "%~dp0"
if not exist .venv\Scripts\python.exe (
    py -3 -m venv .venv || python -m venv .venv || exit /b 1
)
rem Install only when pyproject.toml changed since the last install (the code itself is an
rem editable install): a relaunch starts in about a second.
fc /b pyproject.toml .venv\installed-pyproject.toml >nul 2>&1
if errorlevel 1 (
    .venv\Scripts\python.exe -m pip install --disable-pip-version-check -q -e ".[dev]" || exit /b 1
    copy /y pyproject.toml .venv\installed-pyproject.toml >nul
)
if "%~1"=="test" (
    shift
    .venv\Scripts\python.exe -m pytest %2 %3 %4 %5 %6 %7 %8 %9
    exit /b %ERRORLEVEL%
)
if "%~1"=="" (
    .venv\Scripts\lora-tui.exe examples\quickstart.toml
    exit /b %ERRORLEVEL%
)
.venv\Scripts\lora-train.exe run examples\quickstart.toml %*
exit /b %ERRORLEVEL%
