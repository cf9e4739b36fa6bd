defmodule Snakepit.VenvTest do
  # A virtualenv directory as a pool's :python, with real venvs
  # (`python3 -m venv`) and real workers.
  use ExUnit.Case, async: true

  alias Snakepit.{Error, TestPools}

  # An adapter that exists only in the venv's site-packages, and says which
  # interpreter runs it.
  @adapter """
  import sys

  from snakepit_bridge import BaseAdapter, tool


  class Adapter(BaseAdapter):
      @tool
      def where(self) -> dict:
          import snakepit_bridge
          return {"prefix": sys.prefix, "bridge": snakepit_bridge.__file__}
  """

  test "a venv directory as :python runs its interpreter, with its site-packages and the bridge" do
    {dir, site} = TestPools.venv("snakepit_venv_ok", system_site_packages: true)
    File.write!(Path.join(site, "snakepit_venv_only.py"), @adapter)

    pool = TestPools.start_pool(python: dir, adapter: "snakepit_venv_only.Adapter", python_path: [])

    assert {:ok, %{"prefix" => prefix, "bridge" => bridge}} =
             Snakepit.execute("where", %{}, pool: pool)

    assert prefix == dir
    # Snakepit's own priv/python, not an installed copy.
    assert bridge == Path.join(:code.priv_dir(:snakepit), "python/snakepit_bridge/__init__.py")
  end

  test "the venv's bin/python or, without it, its bin/python3 is the interpreter" do
    {dir, _site} = TestPools.venv("snakepit_venv_python3", system_site_packages: true)
    assert Snakepit.Venv.interpreter(dir) == {:ok, Path.join(dir, "bin/python")}
    File.rm!(Path.join(dir, "bin/python"))
    assert Snakepit.Config.find_python(dir) == {:ok, Path.join(dir, "bin/python3")}
    assert Snakepit.Venv.of(dir) == dir
    assert Snakepit.Venv.of(Path.join(dir, "bin/python3")) == dir
    assert Snakepit.Venv.of("/usr/bin/python3") == nil
  end

  test "a directory without an interpreter is a :validation error naming it" do
    dir = TestPools.tmp_dir("snakepit_not_a_venv")

    assert {:error, %Error{category: :validation, details: %{option: :python}} = e} =
             Snakepit.Pool.start_link(TestPools.opts(python: dir))

    assert e.message ==
             "invalid pool option :python: #{dir} is a directory without bin/python or " <>
               "bin/python3: expected an interpreter, or a virtualenv directory " <>
               "(python3 -m venv #{dir} makes one)"
  end

  test "a venv whose Python is gone is a :validation error that says to recreate it" do
    dir = TestPools.tmp_dir("snakepit_broken_venv")
    File.mkdir_p!(Path.join(dir, "bin"))
    File.ln_s!("/no/such/python3.11", Path.join(dir, "bin/python"))

    assert {:error, %Error{category: :validation} = e} =
             Snakepit.Pool.start_link(TestPools.opts(python: dir))

    assert e.message =~ "#{dir}/bin/python links to /no/such/python3.11, which does not exist"
    assert e.message =~ "python3 -m venv --clear #{dir}"
  end

  test "a venv without msgpack: the pool's start error says what to install, where" do
    {dir, _site} = TestPools.venv("snakepit_venv_bare")
    Process.flag(:trap_exit, true)

    ExUnit.CaptureLog.capture_log(fn ->
      assert {:error, %Error{} = e} = Snakepit.Pool.start_link(TestPools.opts(python: dir, size: 1))
      send(self(), {:error, e})
    end)

    assert_received {:error, e}
    python = Path.join(dir, "bin/python")
    assert e.message =~ "No module named 'msgpack' (nor 'ormsgpack')"
    assert e.message =~ "#{python} -m pip install msgpack"
  end
end
